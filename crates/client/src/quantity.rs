//! Kubernetes resource quantities (`100m`, `1.5`, `128Mi`, `1G`, `1e3`)
//! parsed exactly, then rounded up the way `resource.Quantity`'s `Value()`
//! and `MilliValue()` round.

/// Why a quantity string is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}"
)]
pub struct QuantityError(pub String);

/// A parsed quantity: `digits * 10^exp10 * 2^exp2`, with its sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    digits: u128,
    exp10: i32,
    exp2: u32,
}

impl Quantity {
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        let err = || QuantityError(s.to_string());
        let s = s.trim();
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(num_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(err());
        }
        let mut digits: u128 = 0;
        let mut exp10: i32 = 0;
        let mut after_point = false;
        for c in number.chars() {
            if c == '.' {
                after_point = true;
                continue;
            }
            let d = c as u128 - '0' as u128;
            match digits.checked_mul(10).and_then(|v| v.checked_add(d)) {
                Some(v) => {
                    digits = v;
                    if after_point {
                        exp10 -= 1;
                    }
                }
                // Too many significant digits: drop the rest (they cannot
                // matter at i64 scale).
                None => {
                    if !after_point {
                        exp10 += 1;
                    }
                }
            }
        }
        let mut exp2 = 0;
        match suffix {
            "" => {}
            "n" => exp10 -= 9,
            "u" => exp10 -= 6,
            "m" => exp10 -= 3,
            "k" => exp10 += 3,
            "M" => exp10 += 6,
            "G" => exp10 += 9,
            "T" => exp10 += 12,
            "P" => exp10 += 15,
            "E" => exp10 += 18,
            "Ki" => exp2 = 10,
            "Mi" => exp2 = 20,
            "Gi" => exp2 = 30,
            "Ti" => exp2 = 40,
            "Pi" => exp2 = 50,
            "Ei" => exp2 = 60,
            _ => {
                let exp = suffix
                    .strip_prefix('e')
                    .or_else(|| suffix.strip_prefix('E'))
                    .ok_or_else(err)?;
                if exp.is_empty() {
                    return Err(err());
                }
                let e: i32 = exp.parse().map_err(|_| err())?;
                exp10 = exp10.checked_add(e).ok_or_else(err)?;
            }
        }
        Ok(Quantity {
            negative,
            digits,
            exp10,
            exp2,
        })
    }

    /// `value * 10^scale10`, rounded up (away from zero), saturating at the
    /// bounds of i64.
    fn scaled_ceil(&self, scale10: i32) -> i64 {
        if self.digits == 0 {
            return 0;
        }
        let e = self.exp10.saturating_add(scale10);
        let mut v: u128 = self.digits;
        let mut overflow = false;
        let mut remainder = false;
        for _ in 0..self.exp2 {
            match v.checked_mul(2) {
                Some(x) => v = x,
                None => overflow = true,
            }
        }
        if e >= 0 {
            for _ in 0..e.min(40) {
                match v.checked_mul(10) {
                    Some(x) => v = x,
                    None => {
                        overflow = true;
                        break;
                    }
                }
            }
            if e > 40 {
                overflow = true;
            }
        } else {
            for _ in 0..(-e).min(60) {
                if !v.is_multiple_of(10) {
                    remainder = true;
                }
                v /= 10;
            }
            if -e > 60 && v != 0 {
                remainder = true;
                v = 0;
            }
        }
        if remainder {
            v += 1;
        }
        let magnitude = if overflow || v > i64::MAX as u128 {
            i64::MAX
        } else {
            v as i64
        };
        if self.negative { -magnitude } else { magnitude }
    }

    /// The value rounded up to an integer (`Quantity.Value()`).
    pub fn value(&self) -> i64 {
        self.scaled_ceil(0)
    }

    /// The value in thousandths, rounded up (`Quantity.MilliValue()`).
    pub fn milli_value(&self) -> i64 {
        self.scaled_ceil(3)
    }
}

/// `Value()` of a k8s-openapi quantity; unparseable quantities count as 0
/// (the API server validates them, so this only happens against a server
/// that does not).
pub fn value(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> i64 {
    Quantity::parse(&q.0).map(|q| q.value()).unwrap_or(0)
}

/// `MilliValue()` of a k8s-openapi quantity (0 when unparseable).
pub fn milli_value(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> i64 {
    Quantity::parse(&q.0).map(|q| q.milli_value()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        struct Case {
            name: &'static str,
            input: &'static str,
            value: i64,
            milli: i64,
        }
        let cases = [
            Case {
                name: "millicores",
                input: "100m",
                value: 1,
                milli: 100,
            },
            Case {
                name: "one",
                input: "1",
                value: 1,
                milli: 1000,
            },
            Case {
                name: "decimal fraction",
                input: "1.5",
                value: 2,
                milli: 1500,
            },
            Case {
                name: "binary mebi",
                input: "128Mi",
                value: 134_217_728,
                milli: 134_217_728_000,
            },
            Case {
                name: "decimal giga",
                input: "1G",
                value: 1_000_000_000,
                milli: 1_000_000_000_000,
            },
            Case {
                name: "exponent",
                input: "1e3",
                value: 1000,
                milli: 1_000_000,
            },
            Case {
                name: "upper exponent",
                input: "2E2",
                value: 200,
                milli: 200_000,
            },
            Case {
                name: "negative exponent",
                input: "5e-1",
                value: 1,
                milli: 500,
            },
            Case {
                name: "kilo",
                input: "2k",
                value: 2000,
                milli: 2_000_000,
            },
            Case {
                name: "kibi",
                input: "1Ki",
                value: 1024,
                milli: 1_024_000,
            },
            Case {
                name: "gibi fraction",
                input: "1.5Gi",
                value: 1_610_612_736,
                milli: 1_610_612_736_000,
            },
            Case {
                name: "nano rounds up",
                input: "1n",
                value: 1,
                milli: 1,
            },
            Case {
                name: "micro",
                input: "2500u",
                value: 1,
                milli: 3,
            },
            Case {
                name: "zero",
                input: "0",
                value: 0,
                milli: 0,
            },
            Case {
                name: "leading point",
                input: ".5",
                value: 1,
                milli: 500,
            },
            Case {
                name: "plus sign",
                input: "+3",
                value: 3,
                milli: 3000,
            },
            Case {
                name: "negative",
                input: "-1.5",
                value: -2,
                milli: -1500,
            },
            Case {
                name: "exa saturates milli",
                input: "10E",
                value: i64::MAX,
                milli: i64::MAX,
            },
            Case {
                name: "pods count",
                input: "110",
                value: 110,
                milli: 110_000,
            },
        ];
        for c in cases {
            let q = Quantity::parse(c.input).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert_eq!(q.value(), c.value, "{}: value", c.name);
            assert_eq!(q.milli_value(), c.milli, "{}: milli", c.name);
        }
    }

    #[test]
    fn malformed_quantities_are_rejected() {
        for input in ["", "abc", "1.2.3", "1Qi", "1e", "m", ".", "1 Gi", "1ee3"] {
            assert!(
                Quantity::parse(input).is_err(),
                "{input:?} should not parse"
            );
        }
    }
}
