//! CPU time of the server process, read from `/proc/PID/stat` (Linux) when the load generator
//! runs on the same machine and is told the server's pid. Optional: without it, or off Linux,
//! the CPU figures are simply left out.

/// Clock ticks per second of `/proc/PID/stat` times; 100 on every mainstream Linux.
const CLK_TCK: f64 = 100.0;

/// User + system CPU seconds the process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may contain spaces): state is
    // field 3, utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / CLK_TCK)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_cpu() {
        if cfg!(target_os = "linux") {
            assert!(super::cpu_seconds(std::process::id()).is_some());
        }
    }
}
