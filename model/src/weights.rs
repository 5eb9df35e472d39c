//! Named tensors in and out of safetensors files.
//!
//! ELF parameters are named by their Flax path (spec §1.4: `blocks_3/attn/qkv/kernel`), derived
//! from the module tree: burn's path `blocks.3.attn.qkv.kernel` becomes `blocks_3/attn/qkv/kernel`,
//! and our bias-free `Linear` of the RMS norms is `weight`. Files written here load in PyTorch and
//! numpy through the `safetensors` package.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, View};

use crate::nn::to_vec;

/// Errors reading or writing weight files.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file.
    #[error("{path}: not a valid safetensors file: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A tensor the model needs is absent.
    #[error("{path}: missing tensor {name:?}")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
    },
    /// A tensor has the wrong shape or dtype.
    #[error("{path}: tensor {name:?} {message}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// A safetensors file read into memory.
#[derive(Debug)]
pub struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl TensorFile {
    /// Reads and validates the header of a safetensors file.
    ///
    /// # Errors
    /// IO errors and malformed files, naming the file.
    pub fn open(path: &Path) -> Result<Self, WeightError> {
        let bytes = std::fs::read(path).map_err(|source| WeightError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(path, bytes)
    }

    /// Wraps bytes already in memory; `path` names them in errors.
    ///
    /// # Errors
    /// A malformed header.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, WeightError> {
        SafeTensors::deserialize(&bytes).map_err(|e| WeightError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
        })
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("validated in open")
    }

    /// Returns true when the file holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.st().tensor(name).is_ok()
    }

    /// Returns every tensor name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.st().names().into_iter().map(str::to_string).collect();
        v.sort();
        v
    }

    /// Returns the shape of `name`.
    ///
    /// # Errors
    /// A missing tensor.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>, WeightError> {
        let st = self.st();
        let view = st.tensor(name).map_err(|_| self.missing(name))?;
        Ok(view.shape().to_vec())
    }

    fn missing(&self, name: &str) -> WeightError {
        WeightError::Missing {
            path: self.path.clone(),
            name: name.to_string(),
        }
    }

    /// Returns tensor `name` as f32 after checking its shape (F32, F16, BF16 and F64 convert).
    ///
    /// # Errors
    /// A missing tensor, another shape, or a non-float dtype.
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, WeightError> {
        let st = self.st();
        let view = st.tensor(name).map_err(|_| self.missing(name))?;
        let mismatch = |message: String| WeightError::Mismatch {
            path: self.path.clone(),
            name: name.to_string(),
            message,
        };
        if view.shape() != shape {
            return Err(mismatch(format!(
                "has shape {:?}, expected {:?}",
                view.shape(),
                shape
            )));
        }
        let data = view.data();
        let v = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(mismatch(format!(
                    "has dtype {other:?}, expected a float type"
                )));
            }
        };
        Ok(v)
    }
}

impl TensorFile {
    /// Returns integer tensor `name` (I64, I32 or an integral float) as i64, with its shape.
    ///
    /// # Errors
    /// A missing tensor or another dtype.
    pub fn get_i64(&self, name: &str) -> Result<(Vec<i64>, Vec<usize>), WeightError> {
        let st = self.st();
        let view = st.tensor(name).map_err(|_| self.missing(name))?;
        let shape = view.shape().to_vec();
        let d = view.data();
        let v = match view.dtype() {
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                .collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64)
                .collect(),
            _ => self
                .get_f32(name, &shape)?
                .into_iter()
                .map(|x| x as i64)
                .collect(),
        };
        Ok((v, shape))
    }
}

/// An owned f32 tensor ready to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(bytemuck::cast_slice(&self.data))
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// Serialises named f32 tensors as safetensors bytes (sorted by name, as the format requires).
pub fn to_safetensors(
    tensors: &BTreeMap<String, HostTensor>,
    metadata: Option<BTreeMap<String, String>>,
) -> Vec<u8> {
    let meta = metadata.map(|m| m.into_iter().collect());
    safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), meta)
        .expect("f32 tensors serialise")
}

/// Writes named f32 tensors to a safetensors file.
///
/// # Errors
/// IO errors, naming the file.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
) -> Result<(), WeightError> {
    std::fs::write(path, to_safetensors(tensors, None)).map_err(|source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Turns burn's module path into the Flax name: `blocks.3.attn` -> `blocks_3/attn`.
fn flax_name(path: &[String]) -> String {
    let mut out = String::new();
    for (i, part) in path.iter().enumerate() {
        if part.chars().all(|c| c.is_ascii_digit()) && i > 0 {
            out.push('_');
            out.push_str(part);
        } else {
            if i > 0 {
                out.push('/');
            }
            out.push_str(part);
        }
    }
    out
}

/// One parameter's name, id and shape, in module order.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// Flax-style name.
    pub name: String,
    /// burn's id (stable for the life of the module).
    pub id: ParamId,
    /// Shape.
    pub shape: Vec<usize>,
}

impl ParamInfo {
    /// Returns the number of scalars.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

struct PathTracker {
    stack: Vec<String>,
}

impl PathTracker {
    fn enter(&mut self, name: &str) {
        self.stack.push(name.to_string());
    }
    fn exit(&mut self) {
        self.stack.pop();
    }
    fn name(&self, leaf: Option<&str>) -> String {
        // `enter_module` is also called for the leaf field of a `Param`, so the stack already
        // ends with the parameter's own field name.
        let mut p = self.stack.clone();
        if let Some(l) = leaf {
            p.push(l.to_string());
        }
        flax_name(&p)
    }
}

struct InfoVisitor {
    path: PathTracker,
    out: Vec<ParamInfo>,
}

impl<B: Backend> ModuleVisitor<B> for InfoVisitor {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out.push(ParamInfo {
            name: self.path.name(None),
            id: param.id,
            shape: param.val().dims().to_vec(),
        });
    }
}

/// Lists every float parameter of `module` in module order with its Flax name.
pub fn param_infos<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamInfo> {
    let mut v = InfoVisitor {
        path: PathTracker { stack: vec![] },
        out: vec![],
    };
    module.visit(&mut v);
    v.out
}

struct Collect<B: Backend> {
    out: Vec<Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out.push(param.val().flatten(0, D - 1));
    }
}

/// Returns every float parameter of `module` flattened to 1-D, in module order.
pub fn flat_params<B: Backend, M: Module<B>>(module: &M) -> Vec<Tensor<B, 1>> {
    let mut v = Collect { out: vec![] };
    module.visit(&mut v);
    v.out
}

/// Copies every parameter to the host, keyed by Flax name.
pub fn named_host_params<B: Backend, M: Module<B>>(module: &M) -> BTreeMap<String, HostTensor> {
    let infos = param_infos::<B, M>(module);
    flat_params::<B, M>(module)
        .into_iter()
        .zip(infos)
        .map(|(t, info)| {
            (
                info.name,
                HostTensor {
                    shape: info.shape,
                    data: to_vec(t),
                },
            )
        })
        .collect()
}

/// A parameter rewrite: `(name, shape, flat value) -> new flat value`.
pub type ParamFn<'a, B> = dyn FnMut(&str, &[usize], Tensor<B, 1>) -> Tensor<B, 1> + 'a;

struct Replace<'a, 'f, B: Backend> {
    path: PathTracker,
    f: &'a mut ParamFn<'f, B>,
}

impl<B: Backend> ModuleMapper<B> for Replace<'_, '_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.dims();
        let require_grad = tensor.is_require_grad();
        let name = self.path.name(None);
        let flat = (self.f)(&name, &shape, tensor.flatten(0, D - 1));
        let mut t = flat.reshape(shape);
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Rebuilds `module` with every parameter replaced by `f(name, shape, flat value)`.
pub fn map_params<B: Backend, M: Module<B>>(module: M, f: &mut ParamFn<'_, B>) -> M {
    let mut m = Replace {
        path: PathTracker { stack: vec![] },
        f,
    };
    module.map(&mut m)
}

/// Loads every parameter of `module` from `file` by Flax name (shapes must match) and
/// consumes the whole file: a tensor that is not a parameter of the module is an error too,
/// since a file with extra tensors is a file for another model (or a wrong conversion).
///
/// # Errors
/// The first missing, mis-shaped or unknown tensor, naming the file and the tensor.
pub fn load_named<B: Backend, M: Module<B>>(
    module: M,
    file: &TensorFile,
) -> Result<M, WeightError> {
    let mut err = None;
    let mut used = std::collections::BTreeSet::new();
    let m = map_params(module, &mut |name, shape, old| {
        if err.is_some() {
            return old;
        }
        used.insert(name.to_string());
        match file.get_f32(name, shape) {
            Ok(v) => {
                let n = v.len();
                Tensor::from_data(TensorData::new(v, [n]), &old.device())
            }
            Err(e) => {
                err = Some(e);
                old
            }
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    if let Some(extra) = file.names().into_iter().find(|n| !used.contains(n)) {
        return Err(WeightError::Mismatch {
            path: file.path.clone(),
            name: extra,
            message: "is not a parameter of the model".into(),
        });
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flax_names_join_indices_with_underscore() {
        let p = |v: &[&str]| flax_name(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            p(&["blocks", "3", "attn", "qkv", "kernel"]),
            "blocks_3/attn/qkv/kernel"
        );
        assert_eq!(p(&["proj_kernel"]), "proj_kernel");
    }
}
