use serde::{Deserialize, Serialize};

use crate::CoreError;

/// A dense `f32` tensor in row-major order.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// `clone_from` copies into the buffers it has (a learner takes a model's
/// values every round: a million simulated sites reallocating theirs each
/// time leave the allocator's arenas fragmented).
impl Clone for Tensor {
    fn clone(&self) -> Self {
        Self {
            shape: self.shape.clone(),
            data: self.data.clone(),
        }
    }

    fn clone_from(&mut self, source: &Self) {
        self.shape.clone_from(&source.shape);
        self.data.clone_from(&source.data);
    }
}

impl Tensor {
    /// A tensor from its shape and row-major values; fails when the lengths disagree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, CoreError> {
        let expected = shape.iter().product::<usize>();
        if expected != data.len() {
            return Err(CoreError::ShapeDataMismatch {
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Self { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product::<usize>();
        Self {
            shape,
            data: vec![0.0; n],
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values, row-major, for in-place changes (the shape cannot change).
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor holds no values.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Named `f32` tensors in a fixed order: the parameters of a model, an update
/// (a difference of parameters) or any state shaped like them.
///
/// Names are unique. Order is the order of insertion and is part of the layout:
/// two sets combine only when names, order and shapes all match.
#[derive(Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct ParameterSet {
    names: Vec<String>,
    tensors: Vec<Tensor>,
}

/// `clone_from` copies into the buffers it has, as [`Tensor`]'s does.
impl Clone for ParameterSet {
    fn clone(&self) -> Self {
        Self {
            names: self.names.clone(),
            tensors: self.tensors.clone(),
        }
    }

    fn clone_from(&mut self, source: &Self) {
        self.names.clone_from(&source.names);
        self.tensors.clone_from(&source.tensors);
    }
}

impl ParameterSet {
    /// An empty parameter set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a tensor; fails when the name is already present.
    pub fn push(&mut self, name: impl Into<String>, tensor: Tensor) -> Result<(), CoreError> {
        let name = name.into();
        if self.names.contains(&name) {
            return Err(CoreError::DuplicateName(name));
        }
        self.names.push(name);
        self.tensors.push(tensor);
        Ok(())
    }

    /// The tensor with this name.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        let idx = self.names.iter().position(|n| n == name)?;
        Some(&self.tensors[idx])
    }

    /// The tensor with this name, mutable.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        let idx = self.names.iter().position(|n| n == name)?;
        Some(&mut self.tensors[idx])
    }

    /// Tensors with their names, in layout order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.names.iter().map(String::as_str).zip(&self.tensors)
    }

    /// Tensors in layout order.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    /// Tensors in layout order, mutable (values only: shapes cannot change).
    pub fn tensors_mut(&mut self) -> &mut [Tensor] {
        &mut self.tensors
    }

    /// Tensor names in layout order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Number of tensors.
    pub fn n_tensors(&self) -> usize {
        self.tensors.len()
    }

    /// Total number of values over all tensors.
    pub fn n_values(&self) -> usize {
        self.tensors.iter().map(Tensor::len).sum()
    }

    /// All values in layout order.
    pub fn values(&self) -> impl Iterator<Item = f32> + '_ {
        self.tensors.iter().flat_map(|t| t.data.iter().copied())
    }

    /// All values in layout order, mutable.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut f32> {
        self.tensors.iter_mut().flat_map(|t| t.data.iter_mut())
    }

    /// A set with the same layout, all zeros.
    pub fn zeros_like(&self) -> Self {
        Self {
            names: self.names.clone(),
            tensors: self
                .tensors
                .iter()
                .map(|t| Tensor::zeros(t.shape.clone()))
                .collect(),
        }
    }

    /// A set with this layout and the given flat values (layout order).
    pub fn with_values(&self, values: &[f32]) -> Result<Self, CoreError> {
        if values.len() != self.n_values() {
            return Err(CoreError::LayoutMismatch(format!(
                "expected {} values, got {}",
                self.n_values(),
                values.len()
            )));
        }
        let mut out = self.zeros_like();
        for (dst, src) in out.values_mut().zip(values) {
            *dst = *src;
        }
        Ok(out)
    }

    /// Checks that `other` has exactly this layout: same names, order and shapes.
    pub fn check_same_layout(&self, other: &ParameterSet) -> Result<(), CoreError> {
        if self.names.len() != other.names.len() {
            return Err(CoreError::LayoutMismatch(format!(
                "expected {} tensors, got {}",
                self.names.len(),
                other.names.len()
            )));
        }
        for ((name, tensor), (other_name, other_tensor)) in self.iter().zip(other.iter()) {
            if name != other_name {
                return Err(CoreError::LayoutMismatch(format!(
                    "expected tensor '{name}', got '{other_name}'"
                )));
            }
            if tensor.shape != other_tensor.shape {
                return Err(CoreError::LayoutMismatch(format!(
                    "tensor '{name}' has shape {:?}, expected {:?}",
                    other_tensor.shape, tensor.shape
                )));
            }
        }
        Ok(())
    }

    /// Checks that every value is finite.
    pub fn check_finite(&self) -> Result<(), CoreError> {
        for (name, tensor) in self.iter() {
            if let Some(index) = tensor.data.iter().position(|v| !v.is_finite()) {
                return Err(CoreError::NonFinite {
                    name: name.to_string(),
                    index,
                });
            }
        }
        Ok(())
    }

    /// `self - other`, elementwise; layouts must match.
    pub fn sub(&self, other: &ParameterSet) -> Result<ParameterSet, CoreError> {
        self.check_same_layout(other)?;
        let mut out = self.clone();
        for (dst, src) in out.values_mut().zip(other.values()) {
            *dst -= src;
        }
        Ok(out)
    }

    /// `self += scale * other`, elementwise; layouts must match.
    pub fn add_scaled(&mut self, other: &ParameterSet, scale: f32) -> Result<(), CoreError> {
        self.check_same_layout(other)?;
        for (dst, src) in self.values_mut().zip(other.values()) {
            *dst += scale * src;
        }
        Ok(())
    }

    /// Euclidean norm over all values, accumulated in `f64`.
    pub fn l2_norm(&self) -> f64 {
        self.values()
            .map(|v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt()
    }

    /// Bytes this set takes in Tessera's wire encoding: a protobuf message
    /// `ParameterSet { repeated Tensor tensors = 1; }` with
    /// `Tensor { string name = 1; repeated uint64 shape = 2 [packed]; bytes data = 3; }`,
    /// `data` being the values as little-endian `f32`.
    pub fn wire_len(&self) -> usize {
        self.iter()
            .map(|(name, tensor)| {
                let shape_bytes: usize = tensor.shape.iter().map(|&d| varint_len(d as u64)).sum();
                let data_bytes = 4 * tensor.len();
                let mut len = field_len(name.len());
                if shape_bytes > 0 {
                    len += field_len(shape_bytes);
                }
                if data_bytes > 0 {
                    len += field_len(data_bytes);
                }
                field_len(len)
            })
            .sum()
    }
}

/// Bytes of a length-delimited protobuf field with a one-byte tag.
fn field_len(payload: usize) -> usize {
    1 + varint_len(payload as u64) + payload
}

/// Bytes of a protobuf varint holding `value`.
pub fn varint_len(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    bits.max(1).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_tensors() -> ParameterSet {
        let mut p = ParameterSet::new();
        p.push(
            "w",
            Tensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap(),
        )
        .unwrap();
        p.push("b", Tensor::new(vec![2], vec![-1., 1.]).unwrap())
            .unwrap();
        p
    }

    #[test]
    fn tensor_rejects_wrong_length() {
        let err = Tensor::new(vec![2, 2], vec![1.0; 3]).unwrap_err();
        assert_eq!(err.to_string(), "tensor shape [2, 2] needs 4 values, got 3");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let mut p = two_tensors();
        let err = p.push("w", Tensor::zeros(vec![1])).unwrap_err();
        assert_eq!(err, CoreError::DuplicateName("w".into()));
    }

    #[test]
    fn layout_checks_name_order_and_shape() {
        let p = two_tensors();
        let mut q = ParameterSet::new();
        q.push("b", Tensor::zeros(vec![2])).unwrap();
        q.push("w", Tensor::zeros(vec![2, 3])).unwrap();
        assert!(p.check_same_layout(&q).is_err());
        let mut r = ParameterSet::new();
        r.push("w", Tensor::zeros(vec![3, 2])).unwrap();
        r.push("b", Tensor::zeros(vec![2])).unwrap();
        let msg = p.check_same_layout(&r).unwrap_err().to_string();
        assert!(msg.contains("tensor 'w' has shape [3, 2]"), "{msg}");
        assert!(p.check_same_layout(&p.zeros_like()).is_ok());
    }

    #[test]
    fn arithmetic_and_norm() {
        let p = two_tensors();
        let d = p.sub(&p.zeros_like()).unwrap();
        assert_eq!(d, p);
        let mut q = p.zeros_like();
        q.add_scaled(&p, 2.0).unwrap();
        assert_eq!(
            q.values().collect::<Vec<_>>(),
            vec![2., 4., 6., 8., 10., 12., -2., 2.]
        );
        let expected = (1f64 + 4. + 9. + 16. + 25. + 36. + 1. + 1.).sqrt();
        assert!((p.l2_norm() - expected).abs() < 1e-12);
    }

    #[test]
    fn non_finite_values_are_found() {
        let mut p = two_tensors();
        p.get_mut("b").unwrap().data_mut()[1] = f32::NAN;
        assert_eq!(
            p.check_finite().unwrap_err(),
            CoreError::NonFinite {
                name: "b".into(),
                index: 1
            }
        );
    }

    #[test]
    fn wire_len_counts_protobuf_bytes() {
        // Hand-encoded: tensor "w": name 1+1+1, shape [2,3] 1+1+2, data 24 floats -> 1+1+24;
        // tensor body = 3 + 4 + 26 = 33, framed 1+1+33 = 35.
        // tensor "b": name 3, shape [2] 1+1+1 = 3, data 8 -> 10; body 16, framed 18.
        assert_eq!(two_tensors().wire_len(), 35 + 18);
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(u64::MAX), 10);
    }
}
