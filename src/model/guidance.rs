//! Classifier-free guidance rules. Both take the conditional and null halves of one doubled
//! batch and return the single guided Gaussian per token. A weight of 0 means no guidance.

use burn::tensor::Tensor;

use super::config::GuidanceRule;

/// Guidance settings for one sampling run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guidance {
    /// Weight `w`; 0 disables guidance (pure conditional sampling). For the Gaussian rule `w`
    /// is "diffusion CFG scale - 1".
    pub weight: f32,
    pub rule: GuidanceRule,
    /// Linear rule only: ramp the weight over the tokens, `w * (t + 1) / (T - 1)` (TARFlow's
    /// `evaluate_fid.py`). The Gaussian rule ignores it, as the official code does.
    pub annealed: bool,
    /// Linear rule only: attention temperature of the null pass (1 = none).
    pub null_attention_temperature: f32,
}

impl Guidance {
    pub fn off() -> Self {
        Self {
            weight: 0.0,
            rule: GuidanceRule::Gaussian,
            annealed: false,
            null_attention_temperature: 1.0,
        }
    }

    pub fn new(weight: f32, rule: GuidanceRule) -> Self {
        Self { weight, rule, annealed: false, null_attention_temperature: 1.0 }
    }

    pub fn is_on(&self) -> bool {
        self.weight > 0.0
    }
}

/// STARFlow's rule for the tilted density `p_c^(1+w) / p_u^w` of two Gaussians:
/// `s = min(sigma_c / sigma_u, 1)^2`, `d = 1 + w - w s`, `mu = ((1 + w) mu_c - w s mu_u) / d`,
/// `sigma = sigma_c / sqrt(d)`. Returns `(shift, sigma)`.
pub fn gaussian_rule(
    shift_cond: Tensor<3>,
    sigma_cond: Tensor<3>,
    shift_null: Tensor<3>,
    sigma_null: Tensor<3>,
    weight: f64,
) -> (Tensor<3>, Tensor<3>) {
    let ratio = (sigma_cond.clone() / sigma_null).clamp_max(1.0).square();
    let denominator = ratio.clone().mul_scalar(-weight).add_scalar(1.0 + weight);
    let shift = (shift_cond.mul_scalar(1.0 + weight) - ratio.mul_scalar(weight) * shift_null)
        / denominator.clone();
    let sigma = sigma_cond / denominator.sqrt();
    (shift, sigma)
}

/// TARFlow's rule on raw outputs: `v + g (v - v_null)` for the log-scale and the shift.
pub fn linear_rule(cond: Tensor<3>, null: Tensor<3>, weight: f64) -> Tensor<3> {
    cond.clone() + (cond - null).mul_scalar(weight)
}

/// The Gaussian rule on plain numbers, for checks by hand. Returns `(mu, sigma)`.
pub fn gaussian_rule_scalar(
    mu_c: f64,
    sigma_c: f64,
    mu_u: f64,
    sigma_u: f64,
    w: f64,
) -> (f64, f64) {
    let s = (sigma_c / sigma_u).min(1.0).powi(2);
    let d = 1.0 + w - w * s;
    (((1.0 + w) * mu_c - w * s * mu_u) / d, sigma_c / d.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_rule_matches_the_hand_values_of_the_spec() {
        // w = 3.6, sigma_c = 0.5, sigma_u = 0.8: s = 0.390625, sigma = 0.5 / sqrt(1 + 3.6 * 0.609375).
        let (mu, sigma) = gaussian_rule_scalar(1.0, 0.5, 0.2, 0.8, 3.6);
        assert!((sigma - 0.279_781_855).abs() < 1e-8, "sigma {sigma}");
        let s = 0.390625;
        let d = 1.0 + 3.6 - 3.6 * s;
        assert!((mu - (4.6 * 1.0 - 3.6 * s * 0.2) / d).abs() < 1e-12);
    }

    #[test]
    fn equal_sigmas_give_plain_cfg_on_the_mean() {
        let (mu, sigma) = gaussian_rule_scalar(1.0, 0.7, 0.5, 0.7, 2.0);
        assert!((sigma - 0.7).abs() < 1e-12);
        assert!((mu - (1.0 + 2.0 * (1.0 - 0.5))).abs() < 1e-12);
    }
}
