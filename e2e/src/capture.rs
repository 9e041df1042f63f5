//! Packet captures on the underlay: what actually crosses between nodes.
//! One `tcpdump` per node port of the underlay bridge, inside the underlay
//! namespace: a capture on the bridge device itself would miss frames
//! forwarded between ports, and `-i any` captured nothing on this kernel.
//! Every frame between nodes passes a node port. The captures are read back
//! as text (`tcpdump -n -A`), payload included, to prove that only TLS on
//! 15008 crossed.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::{exec, procs};

/// A running capture.
#[derive(Debug)]
pub struct Capture {
    running: Vec<(Child, PathBuf)>,
}

impl Capture {
    /// Starts capturing TCP on each of `interfaces` of `underlay`, into
    /// `<dir>/<name>-<interface>.pcap`, and returns once every tcpdump says
    /// it is listening.
    pub fn start(
        underlay: &Netns,
        dir: &Path,
        name: &str,
        interfaces: &[String],
    ) -> Result<Capture> {
        if !exec::on_path("tcpdump") {
            return Err(Error::Missing {
                what: "tcpdump".into(),
                hint: "apt-get install -y tcpdump (or `make deps`)".into(),
            });
        }
        let mut capture = Capture {
            running: Vec::new(),
        };
        for interface in interfaces {
            let file = dir.join(format!("{name}-{interface}.pcap"));
            let child = start_one(underlay, interface, &file)?;
            capture.running.push((child, file));
        }
        Ok(capture)
    }

    /// Stops the capture and reads it back.
    pub fn finish(mut self) -> Result<CaptureText> {
        // Packets still in flight when the caller is done: give them a moment.
        std::thread::sleep(Duration::from_millis(200));
        let mut text = String::new();
        for (mut child, file) in self.running.drain(..) {
            procs::signal(child.id(), Signal::SIGINT);
            let _ = child.wait();
            let out = exec::run(
                std::process::Command::new("tcpdump")
                    .args(["-n", "-A", "-r"])
                    .arg(&file),
            )?;
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        Ok(CaptureText { text })
    }
}

fn start_one(underlay: &Netns, interface: &str, file: &Path) -> Result<Child> {
    // `-Z root`: tcpdump would otherwise drop to
    // its own user before opening the file in the run's root-owned
    // directory. `--immediate-mode`: packets still in the capture ring when
    // tcpdump is stopped would otherwise be lost. Its stderr goes to a file:
    // a closed pipe would kill it.
    let log = file.with_extension("log");
    let stderr = std::fs::File::create(&log).map_err(Error::io(&log))?;
    let mut cmd = underlay.command("tcpdump");
    cmd.args([
        "-i",
        interface,
        "--immediate-mode",
        "-U",
        "-n",
        "-Z",
        "root",
        "-w",
    ])
    .arg(file)
    .arg("tcp")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::from(stderr));
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        command: exec::describe(&cmd),
        source,
    })?;
    // tcpdump prints "listening on ..." once the capture is armed.
    let armed = crate::process::wait_until(
        &format!("tcpdump on {interface}"),
        Duration::from_secs(5),
        || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("listening on"))
                || child.try_wait().ok().flatten().is_some()
        },
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if armed.is_err() || !text.contains("listening on") {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::Invalid(format!(
            "tcpdump on {interface} did not start: {text}"
        )));
    }
    Ok(child)
}

impl Drop for Capture {
    fn drop(&mut self) {
        for (child, _) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A capture as text.
#[derive(Clone, Debug)]
pub struct CaptureText {
    /// `tcpdump -n -A` output: one header line per packet, then its payload.
    pub text: String,
}

impl CaptureText {
    /// Packet header lines (`IP a.b.c.d.port > e.f.g.h.port: ...`).
    pub fn packets(&self) -> Vec<&str> {
        self.text.lines().filter(|l| l.contains(" IP ")).collect()
    }

    /// The TCP ports packets went to, with how many packets each.
    pub fn destination_ports(&self) -> std::collections::BTreeMap<u16, usize> {
        let mut ports = std::collections::BTreeMap::new();
        for line in self.packets() {
            if let Some(port) = line
                .split(" > ")
                .nth(1)
                .and_then(|dst| dst.split(':').next())
                .and_then(|dst| dst.rsplit('.').next())
                .and_then(|p| p.parse::<u16>().ok())
            {
                *ports.entry(port).or_insert(0) += 1;
            }
        }
        ports
    }

    /// True when `needle` appears anywhere in the capture, payloads included.
    pub fn contains(&self, needle: &str) -> bool {
        self.text.contains(needle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_from_headers() {
        let c = CaptureText {
            text: "01:00:00.1 IP 10.244.1.2.40000 > 10.244.2.2.15008: Flags [S], seq 1\n\
                   \tpayload\n\
                   01:00:00.2 IP 10.244.2.2.15008 > 10.244.1.2.40000: Flags [S.], seq 2\n"
                .into(),
        };
        let ports = c.destination_ports();
        assert_eq!(ports.get(&15008), Some(&1));
        assert_eq!(ports.get(&40000), Some(&1));
        assert!(c.contains("payload"));
    }
}
