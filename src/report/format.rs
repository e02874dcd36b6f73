//! How the report writes numbers (tables, plot labels): about 4 significant digits, the SD at the mean's
//! precision, p-values to 3 significant digits, and a dash for anything missing or non-finite.

pub const DASH: &str = "—";

/// A number with about 4 significant digits; scientific for very large or small magnitudes.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return DASH.into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if !(1e-4..1e5).contains(&a) {
        return format!("{x:.3e}");
    }
    format!("{x:.*}", decimals(x))
}

/// Decimals that show 4 significant digits of `x` (at most 8).
fn decimals(x: f64) -> usize {
    let mag = x.abs().log10().floor() as i32;
    (3 - mag).clamp(0, 8) as usize
}

/// "mean ± sd" with the SD at the mean's precision (2 significant digits when that would hide it).
pub fn mean_sd(mean: f64, sd: Option<f64>) -> String {
    let m = num(mean);
    let Some(sd) = sd.filter(|s| s.is_finite()) else { return m };
    let a = mean.abs();
    if mean == 0.0 || !(1e-4..1e5).contains(&a) {
        return format!("{m} ± {}", num(sd));
    }
    let d = decimals(mean);
    let s = format!("{sd:.d$}");
    if sd > 0.0 && s.trim_start_matches(['0', '.']).is_empty() {
        let d2 = ((1 - sd.log10().floor() as i32).max(0) as usize).min(12);
        return format!("{m} ± {sd:.d2$}");
    }
    format!("{m} ± {s}")
}

pub fn pval(p: f64) -> String {
    if !p.is_finite() {
        return DASH.into();
    }
    if p < 1e-3 {
        format!("{p:.1e}")
    } else if p >= 0.9995 {
        "1".into()
    } else {
        // 3 significant digits: 0.0625, 0.0136, 0.799
        let d = (2 - p.log10().floor() as i32).clamp(3, 5) as usize;
        format!("{p:.d$}")
    }
}
