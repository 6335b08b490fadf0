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

/// What a peer may do: the engine's own user and root edit; a member of
/// the console group (by primary group or by /etc/group membership)
/// watches; anyone else is refused.
pub fn decide(peer_uid: u32, peer_gid: u32, own_uid: u32, group: Option<&Group>) -> Option<Access> {
    if peer_uid == own_uid || peer_uid == 0 {
        return Some(Access::Admin);
    }
    let group = group?;
    if peer_gid == group.gid {
        return Some(Access::Watch);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    match user_name(&passwd, peer_uid) {
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
        assert_eq!(decide(500, 500, 500, None), Some(Access::Admin));
        assert_eq!(decide(0, 0, 500, None), Some(Access::Admin));
        assert_eq!(decide(1001, 998, 500, Some(&g)), Some(Access::Watch));
        assert_eq!(decide(1001, 1001, 500, None), None);
        assert_eq!(decide(65534, 65534, 500, Some(&g)), None);
    }
}
