//! A model file as an ONNX model: the standardisation as a Sub/Div
//! preamble, each dense layer as MatMul and Add with Relu between them, and
//! a Sigmoid (binary: `[1 - p, p]`) or Softmax head, so that the ONNX
//! model's `probabilities` output is what `tessera predict` gives for rows
//! encoded as the file's `features` say (its metadata lists them, and the
//! classes).
//!
//! The few ONNX messages needed are written here with prost's derive, with
//! the field numbers of `onnx.proto` (IR version 7, opset 13).

use prost::Message;

use super::{ModelFile, ModelFileError};

/// ONNX's `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;
/// ONNX's `AttributeProto.AttributeType.INT`.
const ATTRIBUTE_INT: i32 = 2;

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(string, tag = "2")]
    producer_name: String,
    #[prost(string, tag = "3")]
    producer_version: String,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetIdProto>,
    #[prost(message, repeated, tag = "14")]
    metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, Message)]
struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, Message)]
struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int64, tag = "3")]
    i: i64,
    #[prost(int32, tag = "20")]
    r#type: i32,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
struct Dimension {
    #[prost(int64, optional, tag = "1")]
    dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    dim_param: Option<String>,
}

fn tensor(name: &str, dims: &[usize], values: impl IntoIterator<Item = f32>) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        name: name.to_string(),
        raw_data: values.into_iter().flat_map(f32::to_le_bytes).collect(),
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: output.to_string(),
        op_type: op.to_string(),
        attribute: Vec::new(),
    }
}

fn with_int(mut node: NodeProto, name: &str, value: i64) -> NodeProto {
    node.attribute.push(AttributeProto {
        name: name.to_string(),
        i: value,
        r#type: ATTRIBUTE_INT,
    });
    node
}

/// A float matrix of `columns` columns and any number of rows.
fn matrix(name: &str, columns: usize) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto {
                    dim: vec![
                        Dimension {
                            dim_value: None,
                            dim_param: Some("rows".into()),
                        },
                        Dimension {
                            dim_value: Some(columns as i64),
                            dim_param: None,
                        },
                    ],
                }),
            }),
        }),
    }
}

/// The ONNX model (protobuf bytes) of `file`: input `input` (rows ×
/// features, encoded as the file's features say, not yet standardised),
/// output `probabilities` (rows × classes). Refused for a file without
/// stored standardisation statistics.
pub fn to_onnx(file: &ModelFile) -> Result<Vec<u8>, ModelFileError> {
    let s = &file.header.standardization;
    let (Some(mean), Some(scale)) = (&s.mean, &s.scale) else {
        return Err(ModelFileError::Export(
            "this model file carries no standardisation statistics (each site of its run \
             standardised with its own): export a site's model file (`tessera participant \
             --model-out`), which carries that site's"
                .into(),
        ));
    };
    let d = file.n_features();
    let mut initializer = vec![
        tensor("mean", &[d], mean.iter().map(|&m| m as f32)),
        tensor("scale", &[d], scale.iter().map(|&s| s as f32)),
    ];
    let mut nodes = vec![
        node("Sub", &["input", "mean"], "centred"),
        node("Div", &["centred", "scale"], "x0"),
    ];
    let tensors: Vec<(&str, &tessera_core::Tensor)> = file.parameters.iter().collect();
    let layers = tensors.len() / 2;
    let mut x = "x0".to_string();
    let mut outputs = 0;
    for l in 0..layers {
        let (w_name, w) = tensors[2 * l];
        let (b_name, b) = tensors[2 * l + 1];
        let (&[inputs, width], &[bias]) = (w.shape(), b.shape()) else {
            return Err(ModelFileError::Export(format!(
                "layer {l} is not a dense layer ({w_name} {:?}, {b_name} {:?})",
                w.shape(),
                b.shape()
            )));
        };
        if bias != width || (l == 0 && inputs != d) {
            return Err(ModelFileError::Export(format!(
                "layer {l}'s shapes do not chain ({w_name} {:?}, {b_name} {:?})",
                w.shape(),
                b.shape()
            )));
        }
        let (wn, bn) = (format!("dense{l}.weight"), format!("dense{l}.bias"));
        initializer.push(tensor(&wn, w.shape(), w.data().iter().copied()));
        initializer.push(tensor(&bn, b.shape(), b.data().iter().copied()));
        let (mm, z) = (format!("matmul{l}"), format!("logits{l}"));
        nodes.push(node("MatMul", &[&x, &wn], &mm));
        nodes.push(node("Add", &[&mm, &bn], &z));
        x = z;
        if l + 1 < layers {
            let relu = format!("relu{l}");
            nodes.push(node("Relu", &[&x], &relu));
            x = relu;
        }
        outputs = width;
    }
    let classes = file.classes().len();
    if outputs == 1 && classes == 2 {
        initializer.push(tensor("one", &[1], [1.0]));
        nodes.push(node("Sigmoid", &[&x], "p"));
        nodes.push(node("Sub", &["one", "p"], "q"));
        nodes.push(with_int(
            node("Concat", &["q", "p"], "probabilities"),
            "axis",
            1,
        ));
    } else if outputs == classes {
        nodes.push(with_int(node("Softmax", &[&x], "probabilities"), "axis", 1));
    } else {
        return Err(ModelFileError::Export(format!(
            "the last layer has {outputs} outputs for {classes} classes"
        )));
    }
    let meta = |key: &str, value: String| StringStringEntryProto {
        key: key.to_string(),
        value,
    };
    let h = &file.header;
    let model = ModelProto {
        ir_version: 7,
        producer_name: "tessera".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(GraphProto {
            node: nodes,
            name: h.plan.name.clone(),
            initializer,
            input: vec![matrix("input", d)],
            output: vec![matrix("probabilities", classes)],
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        metadata_props: vec![
            meta(
                "features",
                serde_json::to_string(&h.features).unwrap_or_default(),
            ),
            meta(
                "classes",
                serde_json::to_string(file.classes()).unwrap_or_default(),
            ),
            meta("plan_hash", h.plan.hash.clone()),
        ],
    };
    Ok(model.encode_to_vec())
}
