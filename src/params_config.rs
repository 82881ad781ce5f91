//! The quantization config that a set of parameters was made with: loaded parameters
//! (`--params`) become a [`QuantConfig`] whose `[layers.NAME]` overrides reproduce their
//! settings, so that a change made afterwards re-calibrates from the same settings.

use crate::config::{ActSettings, LayerOverride, QuantConfig};
use crate::params::{ActQuant, ModelParams};
use crate::quant::Strategy;

fn act_override(o: &mut LayerOverride, base: &QuantConfig, s: &ActSettings, a: &ActQuant) {
    if s.bits != base.act_bits {
        o.act_bits = Some(s.bits);
    }
    if s.scheme != base.act_scheme {
        o.act_scheme = Some(s.scheme);
    }
    if s.strategy == Strategy::Manual || s.range.is_some() {
        o.act_range = Some([a.range.lo, a.range.hi]);
    } else if s.strategy != base.act_strategy {
        o.act_strategy = Some(s.strategy);
    }
    if s.strategy == Strategy::Percentile && s.percentile != base.percentile {
        o.percentile = Some(s.percentile);
    }
}

impl ModelParams {
    /// A config with `base`'s global settings and one override table per point whose settings
    /// differ from them; layers without weights are kept in float.
    pub fn to_config(&self, base: &QuantConfig) -> QuantConfig {
        let mut c = QuantConfig {
            keep_float: Vec::new(),
            layers: Default::default(),
            ..base.clone()
        };
        for p in &self.points {
            let mut o = LayerOverride::default();
            act_override(&mut o, base, &p.act.settings, &p.act);
            c.layers.insert(p.name.clone(), o);
        }
        for lp in &self.layers {
            let Some(wq) = &lp.weight else {
                c.keep_float.push(lp.name.clone());
                continue;
            };
            let w = &wq.settings;
            let mut o = LayerOverride {
                channel_bits: wq.q.row_bits(),
                ..Default::default()
            };
            if w.bits != base.weight_bits && o.channel_bits.is_none() {
                o.weight_bits = Some(w.bits);
            }
            if w.scheme != base.weight_scheme {
                o.weight_scheme = Some(w.scheme);
            }
            if w.granularity != base.granularity {
                o.granularity = Some(w.granularity);
            }
            if w.strategy != base.weight_strategy && w.strategy != Strategy::Manual {
                o.weight_strategy = Some(w.strategy);
            }
            if w.strategy == Strategy::Percentile && w.percentile != base.percentile {
                o.percentile = Some(w.percentile);
            }
            o.weight_clip = w.clip;
            if let Some(a) = &lp.act {
                act_override(&mut o, base, &a.settings, a);
            }
            c.layers.insert(lp.name.clone(), o);
        }
        c.prune();
        c
    }
}

#[cfg(test)]
mod tests {
    use crate::config::QuantConfig;
    use crate::pipeline::{Cancel, run};
    use crate::quant::Strategy;

    #[test]
    fn parameters_give_back_the_config_they_were_made_with() {
        let model = crate::bundled::model("mnist-mlp").unwrap();
        let calib = crate::bundled::calib().take(64);
        let eval = crate::bundled::test().take(64);
        let mut config = QuantConfig::default();
        config.layer_mut("fc1").weight_bits = Some(4);
        config.layer_mut("fc2").act_range = Some([0.0, 3.0]);
        config.layer_mut("fc2").weight_clip = Some(0.9);
        config.layer_mut("input").act_strategy = Some(Strategy::Percentile);
        config.keep_float.push("fc3".into());
        let out = run(&model, &calib, &eval, &config, &Cancel::new()).unwrap();
        let back = out.params.to_config(&QuantConfig::default());
        for name in ["input", "fc1", "fc2"] {
            assert_eq!(back.act_settings(name), config.act_settings(name), "{name}");
        }
        for name in ["fc1", "fc2"] {
            assert_eq!(
                back.weight_settings(name),
                config.weight_settings(name),
                "{name}"
            );
        }
        assert_eq!(back.keep_float, vec!["fc3".to_string()]);
    }
}
