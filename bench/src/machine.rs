//! [`Machine`]: what a benchmark figure was measured on, recorded with every report
//! (these VMs change hosts between sessions, and the index's speed depends on the host far
//! more than the peers' does): the CPU model (`/proc/cpuinfo`'s first `model name`), the
//! cores this process may use, and the kernel's transparent-huge-page mode (the bracketed
//! word of `/sys/kernel/mm/transparent_hugepage/enabled`). Unreadable fields are empty
//! (not Linux, or a sandbox hiding them), never an error.

/// The machine a run measured.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    /// `always`, `madvise` or `never` (empty when unknown).
    pub thp: String,
}

impl Machine {
    /// Reads this machine.
    pub fn this() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo").map(|t| cpu_model_of(&t)).unwrap_or_default();
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .map(|t| thp_mode_of(&t))
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        Machine { cpu_model, cores, thp }
    }

    /// One line for a report's header, e.g. `AMD EPYC, 2 cores, THP madvise`.
    pub fn line(&self) -> String {
        let cpu = if self.cpu_model.is_empty() { "unknown CPU" } else { &self.cpu_model };
        let thp = if self.thp.is_empty() { "unknown" } else { &self.thp };
        format!("{cpu}, {} cores, THP {thp}", self.cores)
    }
}

fn cpu_model_of(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
        .unwrap_or_default()
}

fn thp_mode_of(enabled: &str) -> String {
    enabled
        .split_whitespace()
        .find_map(|word| word.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_from_the_kernel_texts() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\nflags\t: fpu\n";
        assert_eq!(cpu_model_of(cpuinfo), "AMD EPYC 9B14");
        assert_eq!(cpu_model_of("processor : 0\n"), "");
        assert_eq!(thp_mode_of("always [madvise] never\n"), "madvise");
        assert_eq!(thp_mode_of("always madvise never"), "");
        let m = Machine { cpu_model: "X".into(), cores: 2, thp: "never".into() };
        assert_eq!(m.line(), "X, 2 cores, THP never");
    }
}
