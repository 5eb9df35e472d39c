//! The concrete backends: flex on CPU by default, CUDA behind the `cuda` feature.

/// The CPU backend (burn flex, multi-threaded with rayon and SIMD).
pub type Cpu = burn::backend::Flex;
/// The CPU backend with autodiff, for training.
pub type CpuTrain = burn::backend::Autodiff<Cpu>;

/// The ndarray CPU backend (measured against flex in BENCHMARKS.md).
#[cfg(feature = "ndarray")]
pub type NdArray = burn::backend::NdArray;
/// The ndarray backend with autodiff.
#[cfg(feature = "ndarray")]
pub type NdArrayTrain = burn::backend::Autodiff<NdArray>;

/// The CUDA backend.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;
/// The CUDA backend with autodiff.
#[cfg(feature = "cuda")]
pub type CudaTrain = burn::backend::Autodiff<Cuda>;

/// Returns true when tensors of `B` live in host memory (the CPU backends), where host kernels
/// in [`crate::cpu`] beat burn's generic ops.
pub fn is_host<B: burn::tensor::backend::Backend>(device: &B::Device) -> bool {
    matches!(B::name(device).as_str(), "flex" | "ndarray")
}
