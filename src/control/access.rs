//! Who may use the control socket: decided from the peer's credentials
//! (SO_PEERCRED), never from anything the peer says.

use super::protocol::Access;
use std::os::unix::fs::MetadataExt;

/// A Unix group, as /etc/group has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The group called `name` in an /etc/group text.
pub fn find_group(etc_group: &str, name: &str) -> Option<Group> {
    etc_group.lines().find_map(|line| {
        let mut f = line.split(':');
        let (n, _, gid, members) = (f.next()?, f.next()?, f.next()?, f.next().unwrap_or(""));
        if n != name {
            return None;
        }
        Some(Group {
            name: n.to_string(),
            gid: gid.trim().parse().ok()?,
            members: members
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect(),
        })
    })
}

/// The login name of `uid` in an /etc/passwd text.
pub fn user_name(etc_passwd: &str, uid: u32) -> Option<String> {
    etc_passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let (name, _, u) = (f.next()?, f.next()?, f.next()?);
        (u.trim().parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

/// The group from the system's /etc/group.
pub fn lookup_group(name: &str) -> Option<Group> {
    find_group(&std::fs::read_to_string("/etc/group").ok()?, name)
}

/// This process's user id (the owner of /proc/self), without unsafe code.
pub fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

/// The peer as SO_PEERCRED gives it, with the supplementary groups of
/// its process ([`Peer::groups_of`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Peer {
    /// The supplementary groups of process `pid` (the `Groups:` line of
    /// its /proc status), if that process still runs as `uid`: a group
    /// given by LDAP or sssd, or by `setgroups`, is in no /etc/group.
    pub fn groups_of(pid: Option<i32>, uid: u32) -> Vec<u32> {
        pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .map(|status| groups_in_status(&status, uid))
            .unwrap_or_default()
    }
}

/// The `Groups:` of a /proc status text whose real and effective `Uid:`
/// are `uid` (else none: the pid is another process by now).
pub fn groups_in_status(status: &str, uid: u32) -> Vec<u32> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| rest.split_whitespace().collect::<Vec<_>>())
    };
    let same_user = field("Uid:").is_some_and(|ids| {
        ids.len() >= 2
            && ids[..2]
                .iter()
                .all(|id| id.parse::<u32>().ok() == Some(uid))
    });
    if !same_user {
        return Vec::new();
    }
    field("Groups:")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|g| g.parse().ok())
        .collect()
}

/// What a peer may do: the engine's own user and root edit; a member of
/// the console group (by primary group, supplementary group or
/// /etc/group membership) watches; anyone else is refused.
pub fn decide(peer: &Peer, own_uid: u32, group: Option<&Group>) -> Option<Access> {
    if peer.uid == own_uid || peer.uid == 0 {
        return Some(Access::Admin);
    }
    let group = group?;
    if peer.gid == group.gid || peer.groups.contains(&group.gid) {
        return Some(Access::Watch);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    match user_name(&passwd, peer.uid) {
        Some(name) if group.members.contains(&name) => Some(Access::Watch),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: &str = "root:x:0:\nadm:x:4:syslog,alice\nrelaygate-watch:x:998:bob, carol\n";

    #[test]
    fn groups_and_members_are_read() {
        let g = find_group(GROUP, "relaygate-watch").unwrap();
        assert_eq!(g.gid, 998);
        assert_eq!(g.members, ["bob", "carol"]);
        assert_eq!(find_group(GROUP, "nope"), None);
        assert_eq!(find_group("broken:x:notanumber:\n", "broken"), None);
        assert_eq!(
            user_name(
                "root:x:0:0::/root:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh",
                1001
            )
            .as_deref(),
            Some("bob")
        );
    }

    #[test]
    fn owner_and_root_edit_the_group_watches_others_are_refused() {
        let g = find_group(GROUP, "relaygate-watch").unwrap();
        let peer = |uid, gid, groups: &[u32]| Peer {
            uid,
            gid,
            groups: groups.to_vec(),
        };
        assert_eq!(decide(&peer(500, 500, &[]), 500, None), Some(Access::Admin));
        assert_eq!(decide(&peer(0, 0, &[]), 500, None), Some(Access::Admin));
        assert_eq!(
            decide(&peer(1001, 998, &[]), 500, Some(&g)),
            Some(Access::Watch)
        );
        assert_eq!(decide(&peer(1001, 1001, &[]), 500, None), None);
        assert_eq!(decide(&peer(65534, 65534, &[]), 500, Some(&g)), None);
        // A supplementary group no /etc/group line names (LDAP, sssd).
        assert_eq!(
            decide(&peer(5003, 5003, &[100, 998]), 500, Some(&g)),
            Some(Access::Watch)
        );
        assert_eq!(decide(&peer(5003, 5003, &[100]), 500, Some(&g)), None);
    }

    #[test]
    fn supplementary_groups_are_read_from_the_process_that_runs_as_the_peer() {
        let status = "Name:\tpython3\nUid:\t5003\t5003\t5003\t5003\nGid:\t5003\t5003\t5003\t5003\nGroups:\t100 998 \n";
        assert_eq!(groups_in_status(status, 5003), [100, 998]);
        // The pid is another user's process by now: none.
        assert!(groups_in_status(status, 5004).is_empty());
        assert!(groups_in_status("Uid:\t5003\t0\t0\t0\nGroups:\t998\n", 5003).is_empty());
        assert!(groups_in_status("Uid:\t7\t7\t7\t7\nGroups:\n", 7).is_empty());
        // This process's own.
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        let uid = own_uid();
        let _ = groups_in_status(&own, uid);
        assert_eq!(
            Peer::groups_of(Some(std::process::id() as i32), uid),
            groups_in_status(&own, uid)
        );
    }
}
