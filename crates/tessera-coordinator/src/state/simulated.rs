//! Settings a plan may carry that run in simulation only: a coordinator
//! refuses them when it opens the plan, naming what deployment offers.

use tessera_engine::Plan;
use tessera_secagg::Scheme;

use crate::CoordinatorError;

/// Refuses simulation's new sites and asynchronous homomorphic aggregation.
pub(super) fn check_plan(plan: &Plan) -> Result<(), CoordinatorError> {
    let refuse = |why: &str| Err(CoordinatorError::Config(why.into()));
    if !plan.personalization.new_sites.is_empty() {
        return refuse(
            "personalization.new_sites is a simulation setting: in deployment a new site \
             is one that did not join the run; remove it from the plan",
        );
    }
    let secure = &plan.secure_aggregation;
    if secure.enabled
        && secure.scheme == Scheme::Homomorphic
        && plan.federation.mode == tessera_engine::Mode::Async
    {
        return refuse(
            "secure_aggregation.scheme = \"homomorphic\" with federation.mode = \"async\" \
             runs in simulation only for now (deployed buffers are SecAgg+ rounds); deploy \
             it synchronously, or with scheme = \"secagg_plus\"",
        );
    }
    Ok(())
}
