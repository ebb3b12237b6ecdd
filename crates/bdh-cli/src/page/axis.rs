//! A chart's axes: the range drawn, where the ticks go and how they read.

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;

/// A tick label with three significant digits (two past 10⁵ or under 10⁻³, as
/// `2e5` or `1.5e-4`).
fn fmt(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}").replace(".0e", "e")
    } else {
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

/// One axis: the range drawn (in log10 units on a log axis), whether its values
/// are whole numbers, and, on a bar chart, the names of its places 0, 1, ….
pub(super) struct Axis {
    pub lo: f64,
    pub hi: f64,
    log: bool,
    whole: bool,
    names: Vec<String>,
}

impl Axis {
    /// The axis of `values` (the positive ones on a log axis), padded a little
    /// unless they are whole numbers.
    pub fn new(values: impl Iterator<Item = f64>, log: bool) -> Self {
        let vals: Vec<f64> = values.filter(|v| v.is_finite() && (!log || *v > 0.0)).collect();
        let whole = !log && !vals.is_empty() && vals.iter().all(|v| v.fract() == 0.0);
        let (mut lo, mut hi) = vals
            .iter()
            .map(|&v| if log { v.log10() } else { v })
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        if hi - lo < 1e-12 {
            (lo, hi) = (lo - 0.5, hi + 0.5);
        } else if !whole {
            let pad = (hi - lo) * 0.03;
            (lo, hi) = (lo - pad, hi + pad);
        }
        Axis { lo, hi, log, whole, names: Vec::new() }
    }

    /// A bar chart's axis of named places 0, 1, …, each name under its place.
    pub fn places(names: &[String]) -> Self {
        Axis { lo: -0.5, hi: names.len().max(1) as f64 - 0.5, log: false, whole: true, names: names.to_vec() }
    }

    /// Where `v` goes (log10 on a log axis); None if it cannot be drawn.
    pub fn map(&self, v: f64) -> Option<f64> {
        match self.log {
            true if v > 0.0 && v.is_finite() => Some(v.log10()),
            false if v.is_finite() => Some(v),
            _ => None,
        }
    }

    /// Where the ticks go, in drawn units: 1, 2 and 5 of each decade on a log axis
    /// (see [`log_ticks`]); plotters' round steps on a linear one, whole numbers
    /// only where its values are whole; every place of a bar chart.
    pub fn ticks(&self) -> Vec<f64> {
        if !self.names.is_empty() {
            return (0..self.names.len()).map(|i| i as f64).collect();
        }
        if self.log {
            return log_ticks(self.lo, self.hi);
        }
        // At most as many ticks as whole units in the range, so that round steps fall
        // on whole numbers there.
        let most = if self.whole { ((self.hi - self.lo).floor() as usize + 1).clamp(2, 10) } else { 8 };
        let ticks = RangedCoordf64::from(self.lo..self.hi).key_points(most);
        ticks.into_iter().filter(|t| !self.whole || t.fract().abs() < 1e-9).collect()
    }

    /// The label of the tick at `v` (drawn units).
    pub fn label(&self, v: f64) -> String {
        if !self.names.is_empty() {
            self.names.get(v.round().max(0.0) as usize).cloned().unwrap_or_default()
        } else if self.log {
            fmt(10f64.powf(v))
        } else if v.abs() < (self.hi - self.lo) * 1e-9 {
            "0".into()
        } else {
            fmt(v)
        }
    }
}

/// An axis as plotters draws it: its range, with ticks where [`Axis::ticks`] puts
/// them (and no lighter grid lines between them).
pub(super) struct Coord {
    range: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Axis {
    /// The axis as plotters draws it.
    pub fn coord(&self) -> Coord {
        Coord { range: (self.lo..self.hi).into(), ticks: self.ticks() }
    }
}

impl Ranged for Coord {
    // Labels come from the chart's formatter, which calls `Axis::label`.
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        self.range.map(v, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.range()
    }
}

/// Ticks of a log axis over 10^lo..10^hi, as log10 values: every decade where it
/// spans four or more (every other one past ten), else 1, 2 and 5 of each decade,
/// or every digit where that leaves fewer than three, or round linear steps on a
/// range narrower than that.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let at = |digits: &[f64]| -> Vec<f64> {
        (lo.floor() as i32..=hi.ceil() as i32)
            .flat_map(|e| digits.iter().map(move |d| d.log10() + f64::from(e)))
            .filter(|t| (lo - 1e-9..=hi + 1e-9).contains(t))
            .collect()
    };
    let decades = at(&[1.0]);
    if decades.len() >= 4 {
        let every = decades.len().div_ceil(10);
        return decades.into_iter().step_by(every).collect();
    }
    for digits in [&[1.0, 2.0, 5.0][..], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]] {
        let ticks = at(digits);
        if ticks.len() >= 3 {
            return ticks;
        }
    }
    let linear = RangedCoordf64::from(10f64.powf(lo)..10f64.powf(hi)).key_points(6);
    linear.into_iter().filter(|v| *v > 0.0).map(f64::log10).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tick labels of a log axis over `values`.
    fn log_labels(values: &[f64]) -> Vec<String> {
        let axis = Axis::new(values.iter().copied(), true);
        axis.ticks().into_iter().map(|t| axis.label(t)).collect()
    }

    /// A loss from 5.6 down to 0.3 spans little more than a decade: 1, 2 and 5 of
    /// each decade give it four ticks, not the two of whole decades (1 and 3.16).
    #[test]
    fn log_axes_tick_one_two_five_of_each_decade() {
        assert_eq!(log_labels(&[0.3, 5.6]), ["0.5", "1", "2", "5"]);
        assert_eq!(log_labels(&[0.015, 0.8]), ["0.02", "0.05", "0.1", "0.2", "0.5"]);
        assert_eq!(log_labels(&[20.0, 90.0]), ["20", "30", "40", "50", "60", "70", "80", "90"]);
        assert_eq!(log_labels(&[1.31e5, 1.65e6]), ["2e5", "5e5", "1e6"]);
        // Wide ranges keep their decades, every other one past ten.
        assert_eq!(log_labels(&[1.0, 1000.0]), ["1", "10", "100", "1000"]);
        assert_eq!(log_labels(&[1e-6, 1e6]), ["1e-6", "1e-4", "0.01", "1", "100", "10000", "1e6"]);
        // A range narrower than a digit's step gets round linear steps.
        let narrow = log_labels(&[0.36, 0.39]);
        assert!(narrow.len() >= 3, "{narrow:?}");
        let values: Vec<f64> = narrow.iter().map(|l| l.parse().unwrap()).collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]) && values.iter().all(|v| (0.35..0.4).contains(v)), "{narrow:?}");
    }

    #[test]
    fn whole_number_axes_tick_whole_numbers_and_places_their_names() {
        let axis = Axis::new([0.0, 1.0, 2.0, 3.0].into_iter(), false);
        assert_eq!(axis.ticks(), [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(axis.label(2.0), "2");
        assert!(Axis::new([0.0, 0.5].into_iter(), false).ticks().iter().any(|t| t.fract() != 0.0));
        let names = ["0:0".to_string(), "0:1".to_string()];
        let places = Axis::places(&names);
        assert_eq!((places.lo, places.hi), (-0.5, 1.5));
        assert_eq!(places.ticks().into_iter().map(|t| places.label(t)).collect::<Vec<_>>(), names);
    }
}
