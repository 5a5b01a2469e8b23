//! [`Time`]: the one time convention of the generation API.

/// A point of the sampling trajectory in the one convention of the generation API: the flow time `t` in `[0, 1]`
/// (`x_t = t * x0 + (1 - t) * noise`, 0 = pure noise, 1 = data) or, equivalently, the noise level
/// `sigma = 1 - t`. A sampler creates it from the variable its grid is computed in ([`Time::from_t`] for the flow
/// samplers, [`Time::from_sigma`] for DPM-Solver++); reading that same variable back is exact, so the network input
/// of each model kind is the value its official sampler computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Time(Repr);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Repr {
    Flow(f64),
    Sigma(f64),
}

/// Which time variable a guidance interval refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeAxis {
    /// The flow time `t` (0 = noise, 1 = data): the class-conditional samplers.
    FlowTime,
    /// The noise level `sigma = 1 - t`: DPM-Solver++ of the text-to-image model.
    NoiseLevel,
}

impl TimeAxis {
    /// The variable's name in messages.
    pub fn symbol(self) -> &'static str {
        match self {
            TimeAxis::FlowTime => "t",
            TimeAxis::NoiseLevel => "sigma",
        }
    }
}

impl Time {
    /// At flow time `t` (0 = noise, 1 = data).
    pub fn from_t(t: f64) -> Self {
        Time(Repr::Flow(t))
    }

    /// At noise level `sigma` (1 = noise, 0 = data).
    pub fn from_sigma(sigma: f64) -> Self {
        Time(Repr::Sigma(sigma))
    }

    /// The flow time `t`.
    pub fn t(self) -> f64 {
        match self.0 {
            Repr::Flow(t) => t,
            Repr::Sigma(s) => 1.0 - s,
        }
    }

    /// The noise level `sigma = 1 - t`.
    pub fn sigma(self) -> f64 {
        match self.0 {
            Repr::Flow(t) => 1.0 - t,
            Repr::Sigma(s) => s,
        }
    }

    /// The value on `axis`.
    pub fn on(self, axis: TimeAxis) -> f64 {
        match axis {
            TimeAxis::FlowTime => self.t(),
            TimeAxis::NoiseLevel => self.sigma(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_a_time_was_made_from_reads_back_exactly() {
        for v in [0.0, 0.1, 0.3, 1.0 / 3.0, 0.999_749_812_359_27, 1.0] {
            assert_eq!(Time::from_t(v).t(), v);
            assert_eq!(Time::from_sigma(v).sigma(), v);
            assert_eq!(Time::from_t(v).sigma(), 1.0 - v);
            assert_eq!(Time::from_sigma(v).on(TimeAxis::FlowTime), 1.0 - v);
        }
    }
}
