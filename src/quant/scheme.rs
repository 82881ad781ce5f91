//! Small value types that describe how a tensor is quantized.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Smallest supported bit width.
pub const MIN_BITS: u8 = 2;
/// Largest supported bit width.
pub const MAX_BITS: u8 = 8;

/// Checks that `bits` is in 2..=8; `key` names the setting in the error.
pub fn check_bits(key: &str, bits: u8) -> Result<u8> {
    if (MIN_BITS..=MAX_BITS).contains(&bits) {
        Ok(bits)
    } else {
        Err(Error::config(
            key,
            format!("{bits} bits is outside {MIN_BITS}..={MAX_BITS}"),
        ))
    }
}

/// Checks that a percentile is in (0, 100]; `key` names the setting in the error.
pub fn check_percentile(key: &str, p: f64) -> Result<f64> {
    if p > 0.0 && p <= 100.0 {
        Ok(p)
    } else {
        Err(Error::config(
            key,
            format!("percentile {p} is outside (0, 100]"),
        ))
    }
}

/// Symmetric (zero point 0, range ±amax) or asymmetric (any [lo, hi] containing 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Zero point 0; integers in [-(2^(B-1)-1), 2^(B-1)-1].
    Symmetric,
    /// Zero point chosen so that lo and hi map to the integer range's ends.
    Asymmetric,
}

/// Which elements of a weight tensor share one scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per output channel.
    PerChannel,
    /// One scale per group of N consecutive input elements of an output channel.
    Group(usize),
}

/// How a clipping range is chosen from observed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// The observed minimum and maximum.
    #[serde(rename = "minmax")]
    MinMax,
    /// A percentile of the values (see `percentile`).
    Percentile,
    /// TensorRT-style entropy calibration.
    Kl,
    /// The clip that minimizes the expected squared quantization error.
    Mse,
    /// Analytic clip for a fitted Laplace or Gaussian distribution.
    Aciq,
    /// A range set by hand, used as given.
    Manual,
}

impl Strategy {
    /// The strategies a user can cycle through (manual is entered by narrowing/widening).
    pub const CHOOSABLE: [Strategy; 5] = [
        Strategy::MinMax,
        Strategy::Percentile,
        Strategy::Kl,
        Strategy::Mse,
        Strategy::Aciq,
    ];

    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::MinMax => "minmax",
            Strategy::Percentile => "percentile",
            Strategy::Kl => "kl",
            Strategy::Mse => "mse",
            Strategy::Aciq => "aciq",
            Strategy::Manual => "manual",
        }
    }
}

impl Scheme {
    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Symmetric => "symmetric",
            Scheme::Asymmetric => "asymmetric",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Granularity::PerTensor => f.write_str("per-tensor"),
            Granularity::PerChannel => f.write_str("per-channel"),
            Granularity::Group(n) => write!(f, "group:{n}"),
        }
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Strategy::Manual]
            .into_iter()
            .chain(Strategy::CHOOSABLE)
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown strategy '{s}' (expected minmax, percentile, kl, mse or aciq)")
            })
    }
}

impl FromStr for Scheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "symmetric" => Ok(Scheme::Symmetric),
            "asymmetric" => Ok(Scheme::Asymmetric),
            _ => Err(format!(
                "unknown scheme '{s}' (expected symmetric or asymmetric)"
            )),
        }
    }
}

impl FromStr for Granularity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "per-tensor" => Ok(Granularity::PerTensor),
            "per-channel" => Ok(Granularity::PerChannel),
            _ => match s.strip_prefix("group:").map(str::parse::<usize>) {
                Some(Ok(n)) if n > 0 => Ok(Granularity::Group(n)),
                _ => Err(format!(
                    "unknown granularity '{s}' (expected per-tensor, per-channel or group:N with N > 0)"
                )),
            },
        }
    }
}

impl Serialize for Granularity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Granularity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Strategy::CHOOSABLE.into_iter().chain([Strategy::Manual]) {
            assert_eq!(s.name().parse::<Strategy>().unwrap(), s);
        }
        for g in [
            Granularity::PerTensor,
            Granularity::PerChannel,
            Granularity::Group(32),
        ] {
            assert_eq!(g.to_string().parse::<Granularity>().unwrap(), g);
        }
        assert!("group:0".parse::<Granularity>().is_err());
        assert!("foo".parse::<Strategy>().is_err());
    }

    #[test]
    fn bits_and_percentile_are_checked() {
        assert!(check_bits("weight_bits", 1).is_err());
        assert!(check_bits("weight_bits", 9).is_err());
        assert_eq!(check_bits("weight_bits", 4).unwrap(), 4);
        assert!(check_percentile("percentile", 0.0).is_err());
        assert!(check_percentile("percentile", 100.5).is_err());
        assert!(check_percentile("percentile", 100.0).is_ok());
    }
}
