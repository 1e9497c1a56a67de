//! The machine facts a results file records (date, CPU, kernel, memory, load, commit, tool
//! versions, whether IPVS is there), because the figures depend on them as much as on the code.

use std::{
    fs,
    path::Path,
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Result;

/// What the results depend on besides the code.
pub struct Facts {
    pub date: String,
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory: String,
    pub loadavg: String,
    pub commit: String,
    /// With `--baseline`: the revision measured as mode `baseline`.
    pub baseline: Option<String>,
    pub tools: Vec<(String, String)>,
    pub ipvs: bool,
}

pub(super) fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_else(|| "not found".into())
}

/// Civil date (UTC) from days since 1970-01-01 (Howard Hinnant's algorithm).
pub(super) fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (y, m, d) = civil(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

impl Facts {
    pub fn collect(root: &Path, srvgate: &Path) -> Result<Facts> {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let memory = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
            .unwrap_or_default();
        let loadavg = fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        let mut commit = first_line(Command::new("git").current_dir(root).args([
            "rev-parse",
            "--short=12",
            "HEAD",
        ]));
        let dirty = Command::new("git")
            .current_dir(root)
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if dirty {
            commit.push_str(" (with uncommitted changes)");
        }
        let tool = |name: &str, args: &[&str]| {
            (
                name.to_string(),
                first_line(Command::new(args[0]).args(&args[1..])),
            )
        };
        let tools = vec![
            tool("srvgate", &[&srvgate.display().to_string(), "--version"]),
            tool("trafgen", &["trafgen", "-v"]),
            tool("nft", &["nft", "-v"]),
            tool("haproxy", &["haproxy", "-v"]),
            tool("nginx", &["nginx", "-v"]),
            tool("iperf3", &["iperf3", "-v"]),
            tool("wrk", &["wrk", "-v"]),
            tool("sockperf", &["sockperf", "-v"]),
            tool("dnsperf", &["dnsperf", "-h"]),
            tool("knotd", &["knotd", "-V"]),
        ];
        Ok(Facts {
            date: today(),
            cores,
            cpu_model,
            kernel,
            memory,
            loadavg,
            commit,
            baseline: None,
            tools,
            ipvs: kernel_has_ipvs(),
        })
    }

    pub fn one_line(&self) -> String {
        format!(
            "{} cores ({}), kernel {}, load {}",
            self.cores, self.cpu_model, self.kernel, self.loadavg
        )
    }
}

/// Whether the running kernel can do IPVS (built in, or as a loadable module).
pub(super) fn kernel_has_ipvs() -> bool {
    if Path::new("/proc/net/ip_vs").exists() {
        return true;
    }
    let Ok(out) = Command::new("sh")
        .args([
            "-c",
            "zcat /proc/config.gz 2>/dev/null | grep -E '^CONFIG_IP_VS=(y|m)'",
        ])
        .output()
    else {
        return false;
    };
    !out.stdout.is_empty() && !no_modules()
}

pub(super) fn no_modules() -> bool {
    fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|w| w == "nomodule"))
        .unwrap_or(false)
}
