//! Out-of-range Rice parameters are refused with an error, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use tessera_psi::gcs::CompressedSet;
use tessera_psi::*;

#[test]
fn out_of_range_rice_parameters_are_refused() {
    let err = CompressedSet::range(1, 200).err().unwrap();
    assert!(err.to_string().contains("200 bits"), "{err}");
    assert_eq!(CompressedSet::range(3, 64).unwrap(), 3u128 << 64);
}

#[test]
fn an_unchecked_configuration_does_not_saturate_the_rice_parameter() {
    let config = PsiConfig {
        fp_bits: 250,
        ..PsiConfig::new(Mode::Both)
    };
    let err = config.param_bits(10).err().unwrap();
    assert!(err.to_string().contains("fp_bits 250"), "{err}");
    assert_eq!(PsiConfig::new(Mode::Both).param_bits(1000).unwrap(), 30);
    assert!(Receiver::start(config, &tokens(&ids(0..10)).tokens).is_err());
}
