//! Network partitions of `berth up`'s replicas, for `chaos`: iptables rules that drop the peer
//! traffic between one replica and the others, while clients still reach every replica's API
//! (a client on the cut-off side is part of the fault).
//!
//! All replicas listen on 127.0.0.1; `berth up` has replica N's connections to its peers come
//! from 127.0.1.N (`--peer-source`), so "N dials M" and "M answers N" are told apart from the
//! other replicas' traffic by source address and peer port. The rules live in a chain of their
//! own, named after this process and jumped to first from INPUT (where loopback packets
//! arrive); dropping `Cut` removes them however the profile ends. Needs root and iptables;
//! without them `chaos` says so and injects the other faults.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use anyhow::Context;

/// Where a replica's peer traffic goes to and comes from, as its command line says.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddrs {
    pub listen: SocketAddr,
    pub source: IpAddr,
}

impl PeerAddrs {
    /// From a `berth server` command line: its `--peer-listen` and `--peer-source`.
    pub fn of_args(args: &[String]) -> Option<PeerAddrs> {
        Some(PeerAddrs {
            listen: flag(args, "--peer-listen")?.parse().ok()?,
            source: flag(args, "--peer-source")?.parse().ok()?,
        })
    }
}

/// The value given to `name` on a command line (`--name value`).
pub fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a String> {
    args.iter().skip_while(|a| *a != name).nth(1)
}

/// Why partitions cannot be made here, if they cannot.
pub fn unavailable() -> Option<String> {
    match Command::new("iptables").args(["-w", "-n", "-L", "INPUT"]).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "iptables cannot change rules here (run as root): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("iptables is not installed ({e})")),
    }
}

/// A replica cut off from others; healed when dropped.
pub struct Cut {
    chain: String,
}

fn iptables(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("iptables").arg("-w").args(args).output().context("running iptables")?;
    anyhow::ensure!(
        out.status.success(),
        "iptables {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The rules that drop everything between `a` and `b` on their peer ports: each one's dials
/// to the other, and the answers on them.
fn rules(a: PeerAddrs, b: PeerAddrs) -> Vec<[String; 4]> {
    let mut rules = Vec::new();
    for (from, to) in [(a, b), (b, a)] {
        let (source, host, port) =
            (from.source.to_string(), to.listen.ip().to_string(), to.listen.port().to_string());
        rules.push([source.clone(), host.clone(), "--dport".into(), port.clone()]);
        rules.push([host, source, "--sport".into(), port]);
    }
    rules
}

impl Cut {
    /// Drops all peer traffic between `isolated` and each of `others`.
    pub fn isolate(isolated: PeerAddrs, others: &[PeerAddrs]) -> anyhow::Result<Cut> {
        let chain = format!("BERTH-CHAOS-{}", std::process::id());
        // One left by a run of this pid that was killed goes first.
        let _ = iptables(&["-D", "INPUT", "-j", &chain]);
        let _ = iptables(&["-F", &chain]);
        let _ = iptables(&["-X", &chain]);
        iptables(&["-N", &chain])?;
        let cut = Cut { chain };
        for other in others {
            for [from, to, port_flag, port] in rules(isolated, *other) {
                iptables(&[
                    "-A",
                    &cut.chain,
                    "-p",
                    "tcp",
                    "-s",
                    &from,
                    "-d",
                    &to,
                    port_flag.as_str(),
                    &port,
                    "-j",
                    "DROP",
                ])?;
            }
        }
        iptables(&["-I", "INPUT", "1", "-j", &cut.chain])?;
        Ok(cut)
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let healed = iptables(&["-D", "INPUT", "-j", &self.chain])
            .and_then(|()| iptables(&["-F", &self.chain]))
            .and_then(|()| iptables(&["-X", &self.chain]));
        if let Err(e) = healed {
            eprintln!(
                "could not remove the partition's iptables rules: {e:#}; run: iptables -D INPUT -j {c}; iptables -F {c}; iptables -X {c}",
                c = self.chain
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{rules, PeerAddrs};

    #[test]
    fn a_cut_drops_both_dials_and_their_answers() {
        let args = |n: u16| -> Vec<String> {
            ["server", "--peer-listen", &format!("127.0.0.1:740{n}"), "--peer-source"]
                .iter()
                .map(|s| s.to_string())
                .chain([format!("127.0.1.{n}")])
                .collect()
        };
        let (one, two) = (PeerAddrs::of_args(&args(1)), PeerAddrs::of_args(&args(2)));
        let rules = rules(one.expect("one"), two.expect("two"));
        let text: Vec<String> = rules.iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            text,
            [
                "127.0.1.1 127.0.0.1 --dport 7402",
                "127.0.0.1 127.0.1.1 --sport 7402",
                "127.0.1.2 127.0.0.1 --dport 7401",
                "127.0.0.1 127.0.1.2 --sport 7401",
            ]
        );
        assert!(PeerAddrs::of_args(&["server".into()]).is_none(), "no flags, no addresses");
    }
}
