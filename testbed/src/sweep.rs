//! Several seeds of one scenario: the spread of each strategy's headline figures.
//!
//! `mule-testbed simulate --seeds 1..5` runs the scenario once per seed (each seed's
//! full report in `seed-N/`) and writes `seeds.json` and `seeds.md`: per strategy, the
//! median, minimum and maximum across seeds of the times to 50 % and 90 % of the
//! audience and of the bytes per delivery. A seed in which a strategy never reached a
//! milestone counts as "never" (worse than any time) for the median and maximum.

use std::fmt::Write;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::report::Report;
use crate::units::fmt_secs;

/// A list of seeds from `A..B` (inclusive), `A,B,C` or a single number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seeds(pub Vec<u64>);

impl FromStr for Seeds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?}: expected seeds as A..B (inclusive), A,B,C or N");
        let seeds: Vec<u64> = if let Some((a, b)) = s.split_once("..") {
            let a: u64 = a.trim().parse().map_err(|_| bad())?;
            let b: u64 = b
                .trim()
                .trim_start_matches('=')
                .parse()
                .map_err(|_| bad())?;
            if b < a || b - a >= 1000 {
                return Err(format!("{s:?}: a range of 1 to 1000 seeds, low..high"));
            }
            (a..=b).collect()
        } else {
            s.split(',')
                .map(|x| x.trim().parse::<u64>().map_err(|_| bad()))
                .collect::<Result<_, _>>()?
        };
        if seeds.is_empty() {
            return Err(bad());
        }
        Ok(Seeds(seeds))
    }
}

/// Median, minimum and maximum of one figure across seeds (`None`: never reached).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// The median (the lower middle value for an even count).
    pub median: Option<f64>,
    /// The smallest value.
    pub min: Option<f64>,
    /// The largest value (`None` if any seed never reached it).
    pub max: Option<f64>,
}

impl Spread {
    /// The spread of `values`, where `None` sorts after every number.
    pub fn of(values: &[Option<f64>]) -> Spread {
        let mut v: Vec<Option<f64>> = values.to_vec();
        v.sort_by(|a, b| match (a, b) {
            (Some(x), Some(y)) => x.total_cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        Spread {
            median: v.get(v.len().saturating_sub(1) / 2).copied().flatten(),
            min: v.first().copied().flatten(),
            max: v.last().copied().flatten(),
        }
    }
}

/// One strategy's figures across seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StrategySpread {
    /// Strategy name (`oracle` for the bound).
    pub strategy: String,
    /// Seconds to 50 % of the audience.
    pub t50: Spread,
    /// Seconds to 90 %.
    pub t90: Spread,
    /// Bytes on the air per delivered bundle (`None` for the oracle).
    pub bytes_per_delivery: Spread,
}

/// The sweep's summary (`seeds.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeedSummary {
    /// The seeds run, in order.
    pub seeds: Vec<u64>,
    /// The oracle first, then the strategies in the order run.
    pub rows: Vec<StrategySpread>,
}

impl SeedSummary {
    /// Summarises one report per seed (all of the same scenario apart from the seed).
    pub fn build(runs: &[(u64, Report)]) -> SeedSummary {
        let mut rows = vec![StrategySpread {
            strategy: "oracle".into(),
            t50: Spread::of(
                &runs
                    .iter()
                    .map(|(_, r)| r.oracle_times.t50)
                    .collect::<Vec<_>>(),
            ),
            t90: Spread::of(
                &runs
                    .iter()
                    .map(|(_, r)| r.oracle_times.t90)
                    .collect::<Vec<_>>(),
            ),
            bytes_per_delivery: Spread::of(&[]),
        }];
        let names: Vec<String> = runs
            .first()
            .map(|(_, r)| r.headline.iter().map(|h| h.strategy.clone()).collect())
            .unwrap_or_default();
        for name in names {
            let pick = |f: &dyn Fn(&crate::report::Headline) -> Option<f64>| -> Vec<Option<f64>> {
                runs.iter()
                    .map(|(_, r)| r.headline.iter().find(|h| h.strategy == name).and_then(f))
                    .collect()
            };
            rows.push(StrategySpread {
                t50: Spread::of(&pick(&|h| h.times.t50)),
                t90: Spread::of(&pick(&|h| h.times.t90)),
                bytes_per_delivery: Spread::of(&pick(&|h| Some(h.bytes_per_delivery))),
                strategy: name,
            });
        }
        SeedSummary {
            seeds: runs.iter().map(|(s, _)| *s).collect(),
            rows,
        }
    }

    /// The Markdown table (`seeds.md`).
    pub fn markdown(&self, title: &str) -> String {
        let t = |x: Option<f64>| x.map(fmt_secs).unwrap_or_else(|| "never".into());
        let b = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into());
        let mut s = format!(
            "# {title}: {} seeds ({})\n\nMedian [min – max] across seeds.\n\n\
             | strategy | time to 50% | time to 90% | bytes/delivery |\n|---|---|---|---|\n",
            self.seeds.len(),
            self.seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} [{} – {}] | {} [{} – {}] | {} [{} – {}] |",
                r.strategy,
                t(r.t50.median),
                t(r.t50.min),
                t(r.t50.max),
                t(r.t90.median),
                t(r.t90.min),
                t(r.t90.max),
                b(r.bytes_per_delivery.median),
                b(r.bytes_per_delivery.min),
                b(r.bytes_per_delivery.max),
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_lists_parse() {
        assert_eq!("1..5".parse::<Seeds>().unwrap().0, vec![1, 2, 3, 4, 5]);
        assert_eq!("1..=3".parse::<Seeds>().unwrap().0, vec![1, 2, 3]);
        assert_eq!("7,9".parse::<Seeds>().unwrap().0, vec![7, 9]);
        assert_eq!("4".parse::<Seeds>().unwrap().0, vec![4]);
        assert!("5..1".parse::<Seeds>().is_err());
        assert!("a..b".parse::<Seeds>().is_err());
        assert!("0..5000".parse::<Seeds>().is_err());
    }

    #[test]
    fn never_sorts_last() {
        let s = Spread::of(&[Some(3.0), None, Some(1.0)]);
        assert_eq!(s.median, Some(3.0));
        assert_eq!(s.min, Some(1.0));
        assert_eq!(s.max, None);
        let s = Spread::of(&[Some(2.0), Some(4.0), Some(1.0), Some(3.0)]);
        assert_eq!((s.median, s.min, s.max), (Some(2.0), Some(1.0), Some(4.0)));
        assert_eq!(Spread::of(&[]).median, None);
    }
}
