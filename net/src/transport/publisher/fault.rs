//! The fault-injection dice behind [`FaultInjection`]: a seeded splitmix64 deciding, per
//! delta, to keep, drop or duplicate it.

use super::config::FaultInjection;

/// What to do with one delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultAction {
    Keep,
    Drop,
    Duplicate,
}

/// Per-subscription dice (seeded from the configured seed and the subscription number, so
/// runs are reproducible given the same subscription order).
pub(crate) struct FaultDice {
    config: FaultInjection,
    state: u64,
}

impl FaultDice {
    pub(crate) fn new(config: FaultInjection, stream: u64) -> Self {
        FaultDice { config, state: config.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn roll(&mut self) -> FaultAction {
        let draw = (self.next() % 1000) as u32;
        if draw < self.config.drop_per_mille {
            FaultAction::Drop
        } else if draw < self.config.drop_per_mille.saturating_add(self.config.duplicate_per_mille) {
            FaultAction::Duplicate
        } else {
            FaultAction::Keep
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_roughly_as_configured() {
        let config = FaultInjection { drop_per_mille: 10, duplicate_per_mille: 20, seed: 7 };
        let mut dice = FaultDice::new(config, 1);
        let rolls: Vec<FaultAction> = (0..100_000).map(|_| dice.roll()).collect();
        let dropped = rolls.iter().filter(|&&a| a == FaultAction::Drop).count();
        let duplicated = rolls.iter().filter(|&&a| a == FaultAction::Duplicate).count();
        assert!((800..1200).contains(&dropped), "{dropped}");
        assert!((1700..2300).contains(&duplicated), "{duplicated}");
    }
}
