//! The convolution on cuDNN in all three passes (feature `cudnn`), f32.
//!
//! candle 0.11 runs cuDNN for the forward convolution only; its input
//! gradient is a naive transposed convolution and its weight gradient a
//! transposed `conv2d`. Here the three passes are cuDNN's
//! (`cudnnConvolutionForward`, `...BackwardData`, `...BackwardFilter`) with
//! the bias + ReLU epilogue, the ReLU mask and the bias gradient in the
//! kernels of [`crate::kernels::cuda`].
//!
//! Per device and per geometry the descriptors and the three algorithms
//! are made once and cached (per thread: cuDNN handles are not `Send`);
//! one workspace per device is reused by every call and grown when a
//! geometry needs more. The algorithms are cuDNN's heuristic choice
//! (`cudnnGet*Algorithm_v7`, as PyTorch with `benchmark = False`), the
//! first one that is deterministic, with FMA math (no TF32): a step gives
//! the same bits every time, so a resumed GPU run is bit-identical. The
//! `bf16` precision (`Algorithm::WinogradBf16`) lets cuDNN use TF32 tensor
//! cores instead (10-bit mantissas, f32 accumulation), still deterministic.
//!
//! The input gets a gradient only where autograd needs one (`track_op`):
//! the image a network is trained on costs no backward-data pass.

// Kernel launches, device allocations a kernel fills whole, and the cuDNN
// C API: each `unsafe` block says why it holds.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::cuda_backend::cudarc::cudnn::{result, sys};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use candle_core::cuda_backend::{CudaDevice, DeviceId, WrapErr};
use candle_core::{CudaStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::Geometry;
use crate::kernels::cuda::{self, not_on_cpu};

impl Geometry {
    fn out_dims(&self) -> [usize; 4] {
        [self.n, self.cout, self.ho, self.wo]
    }
}

/// What a plan is made for: a geometry, and whether TF32 tensor cores may
/// run it (the `bf16` precision; FMA math, f32 throughout, otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub geo: Geometry,
    pub tf32: bool,
}

fn err(e: result::CudnnError) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuDNN: {e:?}"))
}

fn c_int(v: usize) -> candle_core::Result<std::ffi::c_int> {
    std::ffi::c_int::try_from(v)
        .map_err(|_| candle_core::Error::Msg(format!("cuDNN: dimension {v} is too large")))
}

/// A cuDNN handle bound to the device's stream.
struct Handle(sys::cudnnHandle_t);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by `create_handle` and destroyed once, here.
        let _ = unsafe { result::destroy_handle(self.0) };
    }
}

struct TensorDesc(sys::cudnnTensorDescriptor_t);

impl TensorDesc {
    fn new(dims: [usize; 4]) -> candle_core::Result<Self> {
        let d = Self(result::create_tensor_descriptor().map_err(err)?);
        let dims = [
            c_int(dims[0])?,
            c_int(dims[1])?,
            c_int(dims[2])?,
            c_int(dims[3])?,
        ];
        // SAFETY: a live descriptor, set once.
        unsafe {
            result::set_tensor4d_descriptor(
                d.0,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                dims,
            )
        }
        .map_err(err)?;
        Ok(d)
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created above, destroyed once.
        let _ = unsafe { result::destroy_tensor_descriptor(self.0) };
    }
}

struct FilterDesc(sys::cudnnFilterDescriptor_t);

impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created in `Plan::new`, destroyed once.
        let _ = unsafe { result::destroy_filter_descriptor(self.0) };
    }
}

struct ConvDesc(sys::cudnnConvolutionDescriptor_t);

impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created in `Plan::new`, destroyed once.
        let _ = unsafe { result::destroy_convolution_descriptor(self.0) };
    }
}

/// The descriptors and algorithms of one geometry.
struct Plan {
    x: TensorDesc,
    w: FilterDesc,
    y: TensorDesc,
    conv: ConvDesc,
    fwd: (sys::cudnnConvolutionFwdAlgo_t, usize),
    bwd_data: (sys::cudnnConvolutionBwdDataAlgo_t, usize),
    bwd_filter: (sys::cudnnConvolutionBwdFilterAlgo_t, usize),
}

/// The first deterministic algorithm of cuDNN's ranked list that ran its
/// heuristic without error.
macro_rules! pick {
    ($perf:expr, $count:expr, $what:literal) => {{
        let found = $perf[..$count as usize].iter().find(|p| {
            p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
                && p.determinism == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC
        });
        match found {
            Some(p) => p.algo,
            None => candle_core::bail!(concat!(
                "cuDNN offers no deterministic ",
                $what,
                " algorithm for this convolution"
            )),
        }
    }};
}

impl Plan {
    fn new(h: &Handle, key: &Key) -> candle_core::Result<Self> {
        let g = &key.geo;
        let x = TensorDesc::new([g.n, g.cin, g.h, g.w])?;
        let y = TensorDesc::new(g.out_dims())?;
        let w = FilterDesc(result::create_filter_descriptor().map_err(err)?);
        let conv = ConvDesc(result::create_convolution_descriptor().map_err(err)?);
        let (pad, stride) = (c_int(g.pad)?, c_int(g.stride)?);
        let wdims = [c_int(g.cout)?, c_int(g.cin)?, c_int(g.k)?, c_int(g.k)?];
        // SAFETY: live descriptors, set once; the handle is live.
        unsafe {
            result::set_filter4d_descriptor(
                w.0,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                wdims,
            )
            .map_err(err)?;
            result::set_convolution2d_descriptor(
                conv.0,
                pad,
                pad,
                stride,
                stride,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )
            .map_err(err)?;
            // FMA only: no TF32 tensor cores, so f32 stays f32 (unless
            // asked for: cuDNN's default math allows TF32 on Ampere and later).
            let math = if key.tf32 {
                sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
            } else {
                sys::cudnnMathType_t::CUDNN_FMA_MATH
            };
            result::set_convolution_math_type(conv.0, math).map_err(err)?;
        }
        let mut count: std::ffi::c_int = 0;
        // SAFETY (the three blocks): the perf arrays hold as many entries as
        // requested; the descriptors and handle are live.
        let fwd = unsafe {
            let mut perf = [std::mem::zeroed::<sys::cudnnConvolutionFwdAlgoPerf_t>(); 8];
            result::get_convolution_forward_algorithm(
                h.0,
                x.0,
                w.0,
                conv.0,
                y.0,
                perf.len() as _,
                &mut count,
                perf.as_mut_ptr(),
            )
            .map_err(err)?;
            let algo = pick!(perf, count, "forward");
            let ws =
                result::get_convolution_forward_workspace_size(h.0, x.0, w.0, conv.0, y.0, algo)
                    .map_err(err)?;
            (algo, ws)
        };
        let bwd_data = unsafe {
            let mut perf = [std::mem::zeroed::<sys::cudnnConvolutionBwdDataAlgoPerf_t>(); 6];
            result::get_convolution_backward_data_algorithm(
                h.0,
                w.0,
                y.0,
                conv.0,
                x.0,
                perf.len() as _,
                &mut count,
                perf.as_mut_ptr(),
            )
            .map_err(err)?;
            let algo = pick!(perf, count, "backward-data");
            let ws = result::get_convolution_backward_data_workspace_size(
                h.0, w.0, y.0, conv.0, x.0, algo,
            )
            .map_err(err)?;
            (algo, ws)
        };
        let bwd_filter = unsafe {
            let mut perf = [std::mem::zeroed::<sys::cudnnConvolutionBwdFilterAlgoPerf_t>(); 7];
            result::get_convolution_backward_filter_algorithm(
                h.0,
                x.0,
                y.0,
                conv.0,
                w.0,
                perf.len() as _,
                &mut count,
                perf.as_mut_ptr(),
            )
            .map_err(err)?;
            let algo = pick!(perf, count, "backward-filter");
            let ws = result::get_convolution_backward_filter_workspace_size(
                h.0, x.0, y.0, conv.0, w.0, algo,
            )
            .map_err(err)?;
            (algo, ws)
        };
        Ok(Self {
            x,
            w,
            y,
            conv,
            fwd,
            bwd_data,
            bwd_filter,
        })
    }
}

/// What one device keeps: its handle, its plans, its workspace.
struct DeviceCache {
    handle: Handle,
    plans: HashMap<Key, Plan>,
    workspace: Option<CudaSlice<u8>>,
}

thread_local! {
    static CACHE: RefCell<HashMap<DeviceId, DeviceCache>> = RefCell::new(HashMap::new());
}

/// Which pass to run.
#[derive(Clone, Copy)]
enum Pass {
    Forward,
    BackwardData,
    BackwardFilter,
}

/// Runs `pass` of geometry `g` on `dev`: `a` and `b` are its two inputs
/// (forward: x, w; backward-data: dy, w; backward-filter: x, dy), `out`
/// receives its result (overwritten).
fn run(
    dev: &CudaDevice,
    key: &Key,
    pass: Pass,
    a: &impl DevicePtr<f32>,
    b: &impl DevicePtr<f32>,
    out: &mut CudaSlice<f32>,
) -> candle_core::Result<()> {
    // cuDNN runs in the thread's current context: make it the device's
    // (a thread other than the one that opened the device has none).
    dev.cuda_stream().context().bind_to_thread().w()?;
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let entry = match cache.entry(dev.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let stream = dev.cuda_stream();
                let handle = Handle(result::create_handle().map_err(err)?);
                // SAFETY: a live handle and the device's live stream.
                unsafe { result::set_stream(handle.0, stream.cu_stream() as _) }.map_err(err)?;
                v.insert(DeviceCache {
                    handle,
                    plans: HashMap::new(),
                    workspace: None,
                })
            }
        };
        let DeviceCache {
            handle,
            plans,
            workspace,
        } = entry;
        if !plans.contains_key(key) {
            plans.insert(*key, Plan::new(handle, key)?);
        }
        let plan = &plans[key];
        let need = match pass {
            Pass::Forward => plan.fwd.1,
            Pass::BackwardData => plan.bwd_data.1,
            Pass::BackwardFilter => plan.bwd_filter.1,
        };
        if workspace.as_ref().is_none_or(|w| w.len() < need) {
            *workspace = None;
            // SAFETY: a workspace is scratch that cuDNN writes before reading.
            *workspace = Some(unsafe { dev.alloc::<u8>(need.max(1)) }?);
        }
        let ws = workspace.as_mut().expect("allocated above");
        let stream = dev.cuda_stream();
        let (one, zero) = (1f32, 0f32);
        let alpha = &one as *const f32 as *const std::ffi::c_void;
        let beta = &zero as *const f32 as *const std::ffi::c_void;
        let (pa, _ga) = a.device_ptr(&stream);
        let (pb, _gb) = b.device_ptr(&stream);
        let (po, _go) = out.device_ptr_mut(&stream);
        let ws_bytes = ws.len();
        let (pw, _gw) = ws.device_ptr_mut(&stream);
        let ptr = |p: u64| p as *const std::ffi::c_void;
        let mptr = |p: u64| p as *mut std::ffi::c_void;
        // SAFETY: the pointers come from live device buffers of the sizes
        // the descriptors describe (checked by the callers against the
        // geometry), the workspace holds at least the algorithm's need.
        unsafe {
            match pass {
                Pass::Forward => result::convolution_forward(
                    handle.0,
                    alpha,
                    plan.x.0,
                    ptr(pa),
                    plan.w.0,
                    ptr(pb),
                    plan.conv.0,
                    plan.fwd.0,
                    mptr(pw),
                    ws_bytes,
                    beta,
                    plan.y.0,
                    mptr(po),
                ),
                Pass::BackwardData => result::convolution_backward_data(
                    handle.0,
                    alpha,
                    plan.w.0,
                    ptr(pb),
                    plan.y.0,
                    ptr(pa),
                    plan.conv.0,
                    plan.bwd_data.0,
                    mptr(pw),
                    ws_bytes,
                    beta,
                    plan.x.0,
                    mptr(po),
                ),
                Pass::BackwardFilter => result::convolution_backward_filter(
                    handle.0,
                    alpha,
                    plan.x.0,
                    ptr(pa),
                    plan.y.0,
                    ptr(pb),
                    plan.conv.0,
                    plan.bwd_filter.0,
                    mptr(pw),
                    ws_bytes,
                    beta,
                    plan.w.0,
                    mptr(po),
                ),
            }
        }
        .map_err(err)
    })
}

fn check(l: &Layout, dims: &[usize], what: &str) -> candle_core::Result<()> {
    if l.dims() != dims {
        candle_core::bail!(
            "cuDNN convolution: {what} has shape {:?}, the geometry needs {dims:?}",
            l.dims()
        );
    }
    Ok(())
}

/// `pass` on two CUDA storages, into a new buffer of `out` dims.
fn launch(
    key: &Key,
    pass: Pass,
    (sa, la): (&CudaStorage, &Layout),
    (sb, lb): (&CudaStorage, &Layout),
    out: [usize; 4],
) -> candle_core::Result<(CudaStorage, Shape)> {
    let g = &key.geo;
    let (ho, wo) = (g.ho, g.wo);
    let x = [g.n, g.cin, g.h, g.w];
    let w = [g.cout, g.cin, g.k, g.k];
    let y = [g.n, g.cout, ho, wo];
    let (da, db) = match pass {
        Pass::Forward => (x, w),
        Pass::BackwardData => (y, w),
        Pass::BackwardFilter => (x, y),
    };
    check(la, &da, "the first operand")?;
    check(lb, &db, "the second operand")?;
    let a = cuda::f32_view(sa, la, "cuDNN convolution")?;
    let b = cuda::f32_view(sb, lb, "cuDNN convolution")?;
    let dev = &sa.device;
    // SAFETY: cuDNN writes every element (beta = 0).
    let mut o = unsafe { dev.alloc::<f32>(out.iter().product()) }?;
    run(dev, key, pass, &a, &b, &mut o)?;
    Ok((
        CudaStorage::wrap_cuda_slice(o, dev.clone()),
        Shape::from(out.to_vec()),
    ))
}

/// `x` convolved with `w`: forward on cuDNN, both gradients on cuDNN.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CudnnConv(pub Key);

impl CustomOp2 for CudnnConv {
    fn name(&self) -> &'static str {
        "allcnn-cudnn-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        not_on_cpu(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        w: &CudaStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        PassOp(self.0, Pass::Forward).cuda_fwd(x, lx, w, lw)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        grads(&self.0, x, w, &dy.contiguous()?)
    }
}

/// The input gradient (where `x` is tracked) and the weight gradient of
/// the convolution, given the output's gradient `dy`.
fn grads(
    key: &Key,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
    let dx = if x.track_op() {
        Some(dy.apply_op2_no_bwd(&w.contiguous()?, &PassOp(*key, Pass::BackwardData))?)
    } else {
        None
    };
    let dw = x
        .contiguous()?
        .apply_op2_no_bwd(dy, &PassOp(*key, Pass::BackwardFilter))?;
    Ok((dx, Some(dw)))
}

/// One backward pass as an op (no autograd of its own).
#[derive(Clone, Copy)]
struct PassOp(Key, Pass);

impl CustomOp2 for PassOp {
    fn name(&self) -> &'static str {
        match self.1 {
            Pass::Forward => "allcnn-cudnn-conv2d",
            Pass::BackwardData => "allcnn-cudnn-conv2d-backward-data",
            Pass::BackwardFilter => "allcnn-cudnn-conv2d-backward-filter",
        }
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        not_on_cpu(self.name())
    }

    fn cuda_fwd(
        &self,
        a: &CudaStorage,
        la: &Layout,
        b: &CudaStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let g = &self.0.geo;
        let out = match self.1 {
            Pass::Forward => g.out_dims(),
            Pass::BackwardData => [g.n, g.cin, g.h, g.w],
            Pass::BackwardFilter => [g.cout, g.cin, g.k, g.k],
        };
        launch(&self.0, self.1, (a, la), (b, lb), out)
    }
}

/// `conv(x, w) + bias`, rectified when `relu`: the convolution on cuDNN,
/// the bias and ReLU in one pass over its output; the backward masks the
/// gradient with the kept output (`y > 0`), sums it per channel for the
/// bias, and runs cuDNN's two backward passes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CudnnConvBlock {
    pub key: Key,
    pub relu: bool,
}

impl CustomOp3 for CudnnConvBlock {
    fn name(&self) -> &'static str {
        "allcnn-cudnn-conv2d-block"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        not_on_cpu(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        w: &CudaStorage,
        lw: &Layout,
        b: &CudaStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let g = &self.key.geo;
        check(lb, &[g.cout], "the bias")?;
        let (mut y, shape) = launch(&self.key, Pass::Forward, (x, lx), (w, lw), g.out_dims())?;
        let bias = cuda::f32_view(b, lb, "cuDNN convolution bias")?;
        let dev = y.device.clone();
        cuda::bias_act(
            &dev,
            y.as_cuda_slice_mut::<f32>()?,
            &bias,
            g.out_dims(),
            self.relu,
        )?;
        Ok((y, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dy = if self.relu {
            dy.apply_op2_no_bwd(res, &cuda::ReluMask)?
        } else {
            dy
        };
        let db = dy.apply_op1_no_bwd(&cuda::ChannelSums)?;
        let (dx, dw) = grads(&self.key, x, w, &dy)?;
        Ok((dx, dw, Some(db)))
    }
}
