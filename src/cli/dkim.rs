//! `relaygate dkim show|add|remove`: the keys relaygate signs its users'
//! mail with (see [`crate::dkim`]), and the DNS records to publish.

use crate::dkim::{DkimKey, valid_selector};
use crate::store::Store;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum DkimCommand {
    /// Each domain's selector, and the TXT record to publish for it.
    Show,
    /// Sign mail whose From: is in DOMAIN with this RSA key (PEM; make one
    /// with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`).
    Add {
        domain: String,
        /// The DNS label the key is published under
        /// (SELECTOR._domainkey.DOMAIN).
        #[arg(long)]
        selector: String,
        /// The private key file; - reads standard input.
        #[arg(long, value_name = "FILE")]
        key_file: String,
    },
    /// Stop signing for a domain.
    Remove { domain: String },
}

/// The record as a zone file line: TXT strings are at most 255 bytes.
fn zone_line(domain: &str, selector: &str, record: &str) -> String {
    let chunks: Vec<String> = record
        .as_bytes()
        .chunks(250)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{selector}._domainkey.{domain}. IN TXT ( {} )",
        chunks.join(" ")
    )
}

/// A key's domain as it is kept and signed for: its DNS form (A-labels),
/// so that `bücher.example` and `xn--bcher-kva.example` are one domain,
/// and the signature's `d=` and the record's name are what the DNS has.
fn dns_name(domain: &str) -> anyhow::Result<String> {
    let valid = crate::policy::address::normalize_domain(domain)
        .map_err(|p| anyhow::anyhow!("{domain:?} is not a domain: {p}"))?;
    crate::policy::address::ascii_domain(&valid)
        .ok_or_else(|| anyhow::anyhow!("{domain:?} is not a domain the DNS can hold"))
}

pub fn run(store: &mut Store, cmd: DkimCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DkimCommand::Show => {
            let keys = store.dkim_keys()?;
            if keys.is_empty() {
                println!(
                    "no DKIM keys: nothing is signed (relaygate dkim add DOMAIN --selector S --key-file KEY.pem)"
                );
            }
            for crate::store::DkimKeyRow {
                domain,
                selector,
                pem,
            } in keys
            {
                match DkimKey::from_pem(&pem) {
                    Ok(key) => {
                        println!("{domain}  selector {selector}  (RSA, {} bits)", key.bits());
                        println!("  {}", zone_line(&domain, &selector, &key.dns_record()));
                    }
                    Err(e) => println!("{domain}  selector {selector}  UNUSABLE KEY: {e}"),
                }
            }
        }
        DkimCommand::Add {
            domain,
            selector,
            key_file,
        } => {
            let domain = dns_name(&domain)?;
            let selector = selector.to_ascii_lowercase();
            if !valid_selector(&selector) {
                anyhow::bail!(
                    "selector {selector:?}: one or more DNS labels (letters, digits, -), like s2026"
                );
            }
            let pem = if key_file == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&key_file)
                    .map_err(|e| anyhow::anyhow!("reading {key_file}: {e}"))?
            };
            let key = DkimKey::from_pem(&pem).map_err(|e| anyhow::anyhow!("{key_file}: {e}"))?;
            store.set_dkim_key(&domain, &selector, &pem)?;
            println!(
                "mail from {domain} is signed with selector {selector} from now on; publish this record first (until it is in the DNS, receivers fail the signature):"
            );
            println!("  {}", zone_line(&domain, &selector, &key.dns_record()));
            if !store
                .domains()?
                .iter()
                .any(|d| crate::policy::address::ascii_domain(d).as_deref() == Some(&domain))
            {
                println!(
                    "note: {domain} is not a local domain: its mail is signed only when it comes from a client that authenticated or that the allow list allows, with an envelope sender in {domain}"
                );
            }
        }
        DkimCommand::Remove { domain } => {
            let domain = dns_name(&domain)?;
            store.remove_dkim_key(&domain)?;
            println!(
                "mail from {domain} is no longer signed, queued mail included; keep its TXT record a few days for the mail already sent"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_records_are_cut_into_txt_strings() {
        let record = "p=".to_string() + &"A".repeat(400);
        let line = zone_line("example.com", "s1", &record);
        assert!(line.starts_with("s1._domainkey.example.com. IN TXT ( \""));
        assert_eq!(line.matches('"').count(), 4, "{line}");
    }
}
