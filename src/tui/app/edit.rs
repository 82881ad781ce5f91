//! One edit of the selected row's settings (bits, strategy, granularity, scheme, percentile,
//! a hand-set range, kept in float, applied to every layer) on a copy of the config, with the
//! status line it earns or the reason it does not apply. The caller tidies, compares and runs.

use super::{App, GRANULARITIES, NARROW, PERCENTILES, Side, WIDEN, point_what};
use crate::config::QuantConfig;
use crate::quant::{ClipRange, Scheme, Strategy};
use crate::tui::action::Action;

/// Which settings an edit changes: the row's name, whether the weights (else the
/// activations), and how the status line names them.
struct Target<'a> {
    name: &'a str,
    weights: bool,
    what: String,
}

impl App {
    /// `action` on row `name`'s settings in `c` (the weights' or the activations', by the
    /// focused side): the status line, or why it does not apply.
    pub(super) fn apply_edit(
        &self,
        c: &mut QuantConfig,
        name: &str,
        action: Action,
    ) -> Result<String, String> {
        let is_input = self.rows.iter().any(|r| r.name == name && !r.weights);
        let weights = self.focus == Side::Weights;
        if weights && is_input && !matches!(action, Action::ApplyToAll) {
            return Err(format!(
                "{} has no weights: press Tab to edit its activations",
                point_what(name)
            ));
        }
        if c.is_float(name) && !matches!(action, Action::ToggleFloat | Action::ApplyToAll) {
            return Err(format!("{name} is kept in float: press f to quantize it"));
        }
        let side = if weights { "weights" } else { "activations" };
        let t = Target {
            name,
            weights,
            what: format!("{name} {side}"),
        };
        match action {
            Action::BitsUp | Action::BitsDown => step_bits(c, &t, action == Action::BitsUp),
            Action::NextStrategy | Action::PrevStrategy => {
                Ok(step_strategy(c, &t, action == Action::NextStrategy))
            }
            Action::CycleGranularity => cycle_granularity(c, &t),
            Action::ToggleScheme => Ok(toggle_scheme(c, &t)),
            Action::PercentileUp | Action::PercentileDown => {
                step_percentile(c, &t, action == Action::PercentileUp)
            }
            Action::Narrow | Action::Widen => {
                let f = if action == Action::Narrow {
                    NARROW
                } else {
                    WIDEN
                };
                self.scale_range(c, &t, f)
            }
            Action::ResetRange => reset_range(c, &t),
            Action::ToggleFloat => toggle_float(c, name, is_input),
            Action::ApplyToAll => Ok(apply_to_all(c, name, is_input)),
            _ => Err(format!("{action:?} is not an edit")),
        }
    }

    /// The clipping range scaled by `f`: a factor on the weights' strategy ranges, or a
    /// hand-set activation range around the current one (known once a run has chosen it).
    fn scale_range(&self, c: &mut QuantConfig, t: &Target, f: f32) -> Result<String, String> {
        let (name, what) = (t.name, &t.what);
        if t.weights {
            let new = c.layer(name).weight_clip.unwrap_or(1.0) * f;
            c.layer_mut(name).weight_clip = Some(new);
            return Ok(format!(
                "{what}: manual, ×{new:.3} the {} ranges",
                c.weight_settings(name).strategy
            ));
        }
        let base = match c.layer(name).act_range {
            Some([lo, hi]) => ClipRange::new(lo, hi),
            None => self.current_act_range(name).ok_or_else(|| {
                format!("{what}: the range is not known yet; wait for the run to finish")
            })?,
        };
        let r = base.scaled(f);
        c.layer_mut(name).act_range = Some([r.lo, r.hi]);
        Ok(format!("{what}: manual range [{:.4}, {:.4}]", r.lo, r.hi))
    }
}

/// One bit more (`up`) or fewer, within 2..=8.
fn step_bits(c: &mut QuantConfig, t: &Target, up: bool) -> Result<String, String> {
    let (name, what) = (t.name, &t.what);
    let cur = if t.weights {
        c.weight_settings(name).bits
    } else {
        c.act_settings(name).bits
    };
    let new = if up { cur + 1 } else { cur - 1 };
    if !(crate::quant::scheme::MIN_BITS..=crate::quant::scheme::MAX_BITS).contains(&new) {
        return Err(format!("{what}: already {cur} bits (2–8)"));
    }
    let o = c.layer_mut(name);
    if t.weights {
        o.set_weight_bits(new);
    } else {
        o.act_bits = Some(new);
    }
    Ok(format!("{what}: int{new}"))
}

/// The next (or previous) clipping strategy; a hand-set range gives way to it.
fn step_strategy(c: &mut QuantConfig, t: &Target, next: bool) -> String {
    let o = c.layer(t.name);
    let cur = if t.weights {
        o.weight_strategy.unwrap_or(c.weight_strategy)
    } else {
        o.act_strategy.unwrap_or(c.act_strategy)
    };
    let all = Strategy::CHOOSABLE;
    let (i, n) = (all.iter().position(|&s| s == cur).unwrap_or(0), all.len());
    let new = all[if next { (i + 1) % n } else { (i + n - 1) % n }];
    let o = c.layer_mut(t.name);
    if t.weights {
        o.weight_strategy = Some(new);
        o.weight_clip = None;
    } else {
        o.act_strategy = Some(new);
        o.act_range = None;
    }
    format!("{}: {new}", t.what)
}

/// The weights' next granularity (per tensor, per channel, groups).
fn cycle_granularity(c: &mut QuantConfig, t: &Target) -> Result<String, String> {
    if !t.weights {
        return Err("granularity applies to weights: press Tab to edit them".into());
    }
    let cur = c.weight_settings(t.name).granularity;
    let i = GRANULARITIES
        .iter()
        .position(|&g| g == cur)
        .map_or(0, |i| (i + 1) % GRANULARITIES.len());
    let widest = c.weight_settings(t.name).bits;
    let o = c.layer_mut(t.name);
    o.granularity = Some(GRANULARITIES[i]);
    if GRANULARITIES[i] == crate::quant::Granularity::PerTensor && o.channel_bits.is_some() {
        // One scale has one width: the widest channel's.
        o.set_weight_bits(widest);
    }
    Ok(format!("{}: {}", t.what, GRANULARITIES[i]))
}

/// Symmetric ↔ asymmetric.
fn toggle_scheme(c: &mut QuantConfig, t: &Target) -> String {
    let cur = if t.weights {
        c.weight_settings(t.name).scheme
    } else {
        c.act_settings(t.name).scheme
    };
    let new = match cur {
        Scheme::Symmetric => Scheme::Asymmetric,
        Scheme::Asymmetric => Scheme::Symmetric,
    };
    let o = c.layer_mut(t.name);
    if t.weights {
        o.weight_scheme = Some(new);
    } else {
        o.act_scheme = Some(new);
    }
    format!("{}: {new}", t.what)
}

/// The next percentile up or down the list; the first press switches to the percentile
/// strategy at the current P.
fn step_percentile(c: &mut QuantConfig, t: &Target, up: bool) -> Result<String, String> {
    let (name, what) = (t.name, &t.what);
    let cur = c.act_settings(name).percentile;
    let on = if t.weights {
        c.weight_settings(name).strategy == Strategy::Percentile
            && c.layer(name).weight_clip.is_none()
    } else {
        c.act_settings(name).strategy == Strategy::Percentile
    };
    let already = || format!("{what}: percentile is already {cur} (90–100)");
    let new = if !on {
        cur
    } else if up {
        let mut above = PERCENTILES.iter().copied();
        above.find(|&p| p > cur + 1e-9).ok_or_else(already)?
    } else {
        let mut below = PERCENTILES.iter().rev().copied();
        below.find(|&p| p < cur - 1e-9).ok_or_else(already)?
    };
    let o = c.layer_mut(name);
    o.percentile = Some(new);
    if t.weights {
        o.weight_strategy = Some(Strategy::Percentile);
        o.weight_clip = None;
    } else {
        o.act_strategy = Some(Strategy::Percentile);
        o.act_range = None;
    }
    Ok(format!("{what}: percentile {new}"))
}

/// Back to the strategy's own range (drops a hand-set one).
fn reset_range(c: &mut QuantConfig, t: &Target) -> Result<String, String> {
    let o = c.layer_mut(t.name);
    let had = if t.weights {
        o.weight_clip.take()
    } else {
        o.act_range.take().map(|_| 0.0)
    };
    if had.is_none() {
        return Err(format!("{}: already the strategy's range", t.what));
    }
    let s = if t.weights {
        c.weight_settings(t.name).strategy
    } else {
        c.act_settings(t.name).strategy
    };
    Ok(format!("{}: back to the {s} range", t.what))
}

/// Keeps layer `name` in float, or quantizes it again.
fn toggle_float(c: &mut QuantConfig, name: &str, is_input: bool) -> Result<String, String> {
    if is_input {
        return Err(format!("{} cannot stay in float", point_what(name)));
    }
    if c.is_float(name) {
        c.keep_float.retain(|n| n != name);
        Ok(format!("{name}: quantized"))
    } else {
        c.keep_float.push(name.to_string());
        Ok(format!("{name}: kept in float"))
    }
}

/// Makes `name`'s settings the global ones and drops every layer's overrides of them; hand-set
/// ranges stay with their layer.
fn apply_to_all(c: &mut QuantConfig, name: &str, is_input: bool) -> String {
    let a = c.act_settings(name);
    let o = c.layer(name);
    c.act_bits = a.bits;
    c.act_scheme = a.scheme;
    c.act_strategy = o.act_strategy.unwrap_or(c.act_strategy);
    c.percentile = a.percentile;
    if !is_input {
        let w = c.weight_settings(name);
        c.weight_bits = w.bits;
        c.weight_scheme = w.scheme;
        c.granularity = w.granularity;
        c.weight_strategy = w.strategy;
    }
    for o in c.layers.values_mut() {
        o.act_bits = None;
        o.act_scheme = None;
        o.act_strategy = None;
        o.percentile = None;
        if !is_input {
            o.weight_bits = None;
            o.channel_bits = None;
            o.weight_scheme = None;
            o.granularity = None;
            o.weight_strategy = None;
        }
    }
    if is_input {
        format!("{name}'s activation settings apply to every layer (hand-set ranges stay)")
    } else {
        format!("{name}'s settings apply to every layer (hand-set ranges stay)")
    }
}
