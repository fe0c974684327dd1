//! Settings a plan may carry that run in simulation only: a coordinator
//! refuses them when it opens the plan, naming what deployment offers.

use tessera_engine::Plan;
use tessera_secagg::Scheme;

use crate::CoordinatorError;

/// Refuses simulation's new sites and homomorphic aggregation.
pub(super) fn check_plan(plan: &Plan) -> Result<(), CoordinatorError> {
    let refuse = |why: &str| Err(CoordinatorError::Config(why.into()));
    if !plan.personalization.new_sites.is_empty() {
        return refuse(
            "personalization.new_sites is a simulation setting: in deployment a new site \
             is one that did not join the run; remove it from the plan",
        );
    }
    let secure = &plan.secure_aggregation;
    if secure.enabled && secure.scheme == Scheme::Homomorphic {
        return refuse(
            "secure_aggregation.scheme = \"homomorphic\" runs in simulation only for now \
             (its decryption shares have no wire format yet); deploy with \
             scheme = \"secagg_plus\"",
        );
    }
    Ok(())
}
