//! The unit table a mapping converts with: linear conversions `to = a x + b`
//! between the units clinical data comes in. Conversions between mass and
//! amount concentrations (mg/dL and mmol/L) depend on the substance's molar
//! mass, so they are listed per substance.

/// A conversion `to = scale * from + offset`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Linear {
    /// Multiplies the value.
    pub scale: f64,
    /// Then added.
    pub offset: f64,
}

/// Units that convert the same for every substance: (from, to, scale, offset).
const PLAIN: &[(&str, &str, f64, f64)] = &[
    ("degF", "degC", 5.0 / 9.0, -32.0 * 5.0 / 9.0),
    ("degC", "K", 1.0, 273.15),
    ("lb", "kg", 0.453_592_37, 0.0),
    ("in", "cm", 2.54, 0.0),
    ("m", "cm", 100.0, 0.0),
    ("g/L", "g/dL", 0.1, 0.0),
    ("mg/dL", "mg/L", 10.0, 0.0),
    ("kPa", "mmHg", 7.500_615_75, 0.0),
];

/// Mass to amount concentration, per substance: milligrams per decilitre
/// in one millimole per litre (10 / molar mass in g/mol inverted), or for
/// creatinine micromoles per litre in one milligram per decilitre.
const SUBSTANCES: &[(&str, &str, &str, f64)] = &[
    ("cholesterol", "mmol/L", "mg/dL", 38.67),
    ("triglycerides", "mmol/L", "mg/dL", 88.57),
    ("glucose", "mmol/L", "mg/dL", 18.016),
    ("urea", "mmol/L", "mg/dL", 6.006),
    ("urea nitrogen", "mmol/L", "mg/dL", 2.801),
    ("creatinine", "mg/dL", "umol/L", 88.42),
];

/// Every unit the table converts between, in its one spelling.
pub fn units() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = PLAIN
        .iter()
        .flat_map(|&(a, b, ..)| [a, b])
        .chain(SUBSTANCES.iter().flat_map(|&(_, a, b, _)| [a, b]))
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Unit names as a mapping may write them, in one spelling (`mg/dl` and
/// `MG/DL` are `mg/dL`, `F` is `degF`); a unit the table does not know
/// comes back as written, trimmed.
pub fn canonical(unit: &str) -> String {
    let unit = unit.trim();
    match unit.to_ascii_lowercase().as_str() {
        "f" | "°f" | "degf" | "fahrenheit" => "degF".into(),
        "c" | "°c" | "degc" | "celsius" => "degC".into(),
        "k" | "kelvin" => "K".into(),
        "lb" | "lbs" | "pound" | "pounds" => "lb".into(),
        "kg" | "kilogram" | "kilograms" => "kg".into(),
        "in" | "inch" | "inches" => "in".into(),
        "cm" | "centimetre" | "centimeter" | "centimetres" | "centimeters" => "cm".into(),
        "m" | "metre" | "meter" | "metres" | "meters" => "m".into(),
        "g/l" => "g/L".into(),
        "g/dl" => "g/dL".into(),
        "mg/dl" => "mg/dL".into(),
        "mg/l" => "mg/L".into(),
        "mmol/l" => "mmol/L".into(),
        "umol/l" | "µmol/l" | "μmol/l" => "umol/L".into(),
        "kpa" => "kPa".into(),
        "mmhg" => "mmHg".into(),
        _ => unit.to_string(),
    }
}

/// The conversion from `from` to `to` (of `substance` where the units
/// depend on it); `Err` naming the conversions there are.
pub fn conversion(from: &str, to: &str, substance: Option<&str>) -> Result<Linear, String> {
    let (from, to) = (canonical(from), canonical(to));
    if from == to {
        return Ok(Linear {
            scale: 1.0,
            offset: 0.0,
        });
    }
    let invert = |l: Linear| Linear {
        scale: 1.0 / l.scale,
        offset: -l.offset / l.scale,
    };
    if let Some(substance) = substance {
        let substance = substance.trim().to_ascii_lowercase();
        for &(s, a, b, scale) in SUBSTANCES {
            if s != substance {
                continue;
            }
            let forward = Linear { scale, offset: 0.0 };
            if (a, b) == (from.as_str(), to.as_str()) {
                return Ok(forward);
            }
            if (b, a) == (from.as_str(), to.as_str()) {
                return Ok(invert(forward));
            }
        }
    }
    for &(a, b, scale, offset) in PLAIN {
        let forward = Linear { scale, offset };
        if (a, b) == (from.as_str(), to.as_str()) {
            return Ok(forward);
        }
        if (b, a) == (from.as_str(), to.as_str()) {
            return Ok(invert(forward));
        }
    }
    let plain: Vec<String> = PLAIN.iter().map(|(a, b, ..)| format!("{a}-{b}")).collect();
    let molar: Vec<String> = SUBSTANCES
        .iter()
        .map(|(s, a, b, _)| format!("{a}-{b} ({s})"))
        .collect();
    Err(format!(
        "no conversion from {from} to {to}{}; the table has {} and, with a substance, {}",
        substance.map_or_else(String::new, |s| format!(" for {s}")),
        plain.join(", "),
        molar.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn apply(l: Linear, x: f64) -> f64 {
        l.scale * x + l.offset
    }

    #[test]
    fn published_values_convert_both_ways() {
        let f_to_c = conversion("F", "°C", None).unwrap();
        assert!((apply(f_to_c, 98.6) - 37.0).abs() < 1e-9);
        assert!((apply(f_to_c, 32.0)).abs() < 1e-12);
        let c_to_f = conversion("celsius", "degF", None).unwrap();
        assert!((apply(c_to_f, 100.0) - 212.0).abs() < 1e-9);
        let chol = conversion("mmol/L", "mg/dL", Some("Cholesterol")).unwrap();
        assert!((apply(chol, 5.0) - 193.35).abs() < 1e-9);
        let back = conversion("mg/dl", "mmol/l", Some("cholesterol")).unwrap();
        assert!((apply(back, 193.35) - 5.0).abs() < 1e-9);
        let glucose = conversion("mmol/L", "mg/dL", Some("glucose")).unwrap();
        assert!((apply(glucose, 5.5) - 99.088).abs() < 1e-9);
        assert!((apply(conversion("lbs", "kg", None).unwrap(), 1.0) - 0.45359237).abs() < 1e-15);
        assert_eq!(apply(conversion("kg", "kg", None).unwrap(), 3.5), 3.5);
    }

    #[test]
    fn an_unknown_conversion_names_the_table() {
        let e = conversion("mmol/L", "mg/dL", None).unwrap_err();
        assert!(e.contains("no conversion from mmol/L to mg/dL"), "{e}");
        assert!(e.contains("mmol/L-mg/dL (cholesterol)"), "{e}");
        let e = conversion("mmol/L", "mg/dL", Some("sodium")).unwrap_err();
        assert!(e.contains("for sodium"), "{e}");
    }
}
