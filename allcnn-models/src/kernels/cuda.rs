//! The crate's CUDA kernels (feature `cuda`): the paper's max-pool, its
//! switches and its exact backward, the bias + ReLU epilogue of the
//! convolution, the ReLU mask of its backward, per-channel sums (the bias
//! gradient), the dropout mask and the momentum-SGD update, all f32.
//!
//! The kernels are CUDA C in [`SOURCE`], compiled once per process by NVRTC
//! (the `libnvrtc` of the machine that runs them, so the PTX always suits
//! its driver) and loaded once per device. Each one writes its output in a
//! fixed order, with no atomics: a run is bit-identical from one launch to
//! the next, and the pool's forward, switches and backward are bit-identical
//! to the CPU kernels (`tests/pool.rs` compares them on every device).

// Kernel launches, device allocations a kernel fills whole, and the cuDNN
// C API: each `unsafe` block says why it holds.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Shape};

use super::pool::pooled_size;

/// The ChaCha8 block function in portable C (checked against rand_chacha on
/// the CPU by compiling it with the system C compiler).
pub(crate) const CHACHA8: &str = include_str!("cuda/chacha8.cuh");

/// The CUDA C source of every kernel of this module (after [`CHACHA8`]).
pub(crate) const SOURCE: &str = r#"
// Inverted-dropout mask of `len` entries from ChaCha8 word position `start`
// (DropoutRng::mask's words, bit for bit): one thread per 16-word block.
extern "C" __global__ void allcnn_dropout_mask_f32(float* out, long long len,
        unsigned int k0, unsigned int k1, unsigned int k2, unsigned int k3,
        unsigned int k4, unsigned int k5, unsigned int k6, unsigned int k7,
        unsigned long long stream, unsigned long long start, unsigned int threshold, float keep) {
    if (len <= 0) return;
    unsigned int key[8] = {k0, k1, k2, k3, k4, k5, k6, k7};
    unsigned long long first = start / 16, last = (start + (unsigned long long)len - 1) / 16;
    for (unsigned long long b = first + blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         b <= last; b += (unsigned long long)gridDim.x * blockDim.x) {
        allcnn_dropout_block(out, (unsigned long long)len, key, stream, start, b, threshold, keep);
    }
}

// The window of pooled output (oy, ox) in an h x w plane: rows y0..y1,
// columns x0..x1 (the padding is left out, so it never wins). The first
// maximum in row-major order wins; a NaN wins and sticks (as on the CPU).
__device__ __forceinline__ int allcnn_argmax(const float* p, int h, int w, int oy, int ox) {
    int y0 = max(2 * oy - 1, 0), y1 = min(2 * oy + 2, h);
    int x0 = max(2 * ox - 1, 0), x1 = min(2 * ox + 2, w);
    int best = y0 * w + x0;
    float bv = p[best];
    for (int y = y0; y < y1; ++y) {
        for (int x = x0; x < x1; ++x) {
            float v = p[y * w + x];
            if (v > bv || (isnan(v) && !isnan(bv))) { bv = v; best = y * w + x; }
        }
    }
    return best;
}

extern "C" __global__ void allcnn_pool_f32(const float* x, float* y, unsigned int* sw,
                                           long long planes, int h, int w, int ho, int wo) {
    long long total = planes * ho * wo;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        int ox = (int)(i % wo);
        long long t = i / wo;
        int oy = (int)(t % ho);
        long long p = t / ho;
        const float* plane = x + p * h * w;
        int j = allcnn_argmax(plane, h, w, oy, ox);
        if (y) y[i] = plane[j];
        if (sw) sw[i] = (unsigned int)j;
    }
}

// dx[j] = sum of g[i] over the outputs i whose window j won, added in
// ascending i (the CPU's order, so the sums are the same bits).
extern "C" __global__ void allcnn_pool_bwd_f32(const float* x, const float* g, float* dx,
                                               long long planes, int h, int w, int ho, int wo) {
    long long total = planes * h * w;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        int xx = (int)(i % w);
        long long t = i / w;
        int yy = (int)(t % h);
        long long p = t / h;
        const float* plane = x + p * h * w;
        const float* gp = g + p * ho * wo;
        int j = yy * w + xx;
        float acc = 0.0f;
        int oy1 = min((yy + 1) / 2, ho - 1), ox1 = min((xx + 1) / 2, wo - 1);
        for (int oy = yy / 2; oy <= oy1; ++oy) {
            for (int ox = xx / 2; ox <= ox1; ++ox) {
                if (allcnn_argmax(plane, h, w, oy, ox) == j) acc += gp[oy * wo + ox];
            }
        }
        dx[i] = acc;
    }
}

// In place: y = y + b[c], rectified when relu != 0 (fmaxf: a NaN becomes 0,
// as f32::max on the CPU).
extern "C" __global__ void allcnn_bias_act_f32(float* y, const float* b, long long total,
                                               int c, long long plane, int relu) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        float v = y[i] + b[(i / plane) % c];
        y[i] = relu ? fmaxf(v, 0.0f) : v;
    }
}

// Momentum SGD in place, the CPU's expressions (compiled without FMA
// contraction, so the CPU's bits): v = v * m + (g + w * wd); w -= v * lr.
extern "C" __global__ void allcnn_sgd_velocity_f32(float* v, const float* g, const float* w,
                                                   long long total, float m, float wd) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        v[i] = v[i] * m + (g[i] + w[i] * wd);
    }
}

extern "C" __global__ void allcnn_sgd_weight_f32(float* w, const float* v, long long total, float lr) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        w[i] -= v[i] * lr;
    }
}

// out = g where y > 0, else 0 (PyTorch's ReLU backward).
extern "C" __global__ void allcnn_relu_mask_f32(const float* g, const float* y, float* out,
                                                long long total) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        out[i] = y[i] > 0.0f ? g[i] : 0.0f;
    }
}

// out[c] = sum over n and the plane of g[n, c, :], one block of 256 threads
// per channel, in double, in a fixed order (a deterministic tree).
extern "C" __global__ void allcnn_channel_sum_f32(const float* g, float* out, int n, int c,
                                                  long long plane) {
    __shared__ double part[256];
    int ch = blockIdx.x;
    double acc = 0.0;
    long long per = (long long)n * plane;
    for (long long k = threadIdx.x; k < per; k += blockDim.x) {
        long long img = k / plane, e = k % plane;
        acc += (double)g[(img * c + ch) * plane + e];
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[ch] = (float)part[0];
}
"#;

/// The module name the kernels are loaded under on each device.
const MODULE: &str = "allcnn_kernels";

/// The PTX of [`SOURCE`], compiled on first use.
///
/// # Errors
/// When NVRTC is missing or refuses the source (the message is NVRTC's log).
pub(crate) fn ptx() -> candle_core::Result<&'static str> {
    static PTX: OnceLock<Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        use candle_core::cuda_backend::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
        let src = format!("#define ALLCNN_HD __device__\n{CHACHA8}\n{SOURCE}");
        // No FMA contraction: the element-wise kernels round as the CPU does.
        let opts = CompileOptions {
            fmad: Some(false),
            ..Default::default()
        };
        compile_ptx_with_opts(src, opts)
            .map(|p| p.to_src())
            .map_err(|e| format!("NVRTC could not compile the allcnn CUDA kernels: {e:?}"))
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(e.clone()))
}

const THREADS: u32 = 256;

/// A grid-stride launch over `total` elements.
fn cfg(total: usize) -> LaunchConfig {
    let blocks = total.div_ceil(THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The f32 data of `s` as a view from the layout's start, which must be
/// contiguous.
pub(crate) fn f32_view<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<CudaView<'a, f32>> {
    if !l.is_contiguous() {
        candle_core::bail!("{what}: the CUDA kernel needs a contiguous tensor");
    }
    if s.dtype() != DType::F32 {
        candle_core::bail!("{what}: the CUDA kernel takes f32, not {:?}", s.dtype());
    }
    let n = l.shape().elem_count();
    Ok(s.as_cuda_slice::<f32>()?
        .slice(l.start_offset()..l.start_offset() + n))
}

/// A zero-initialised f32 buffer of `n` elements on `dev` (the kernels that
/// fill their whole output use [`alloc`]).
fn alloc<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> candle_core::Result<CudaSlice<T>> {
    // SAFETY: every caller launches a kernel that writes all `n` elements
    // before the buffer is read.
    unsafe { dev.alloc::<T>(n) }
}

fn dims4(l: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    l.shape().dims4()
}

fn int(v: usize, what: &str) -> candle_core::Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what}: {v} is too large")))
}

/// The pooled values and the switches, each where asked for.
type PoolOut = (Option<CudaSlice<f32>>, Option<CudaSlice<u32>>);

/// The pooled map of `x` `[N, C, H, W]` (`Some` in `out`) and/or its
/// switches.
fn pool(s: &CudaStorage, l: &Layout, values: bool, switches: bool) -> candle_core::Result<PoolOut> {
    let (n, c, h, w) = dims4(l)?;
    let x = f32_view(s, l, "max_pool")?;
    let (ho, wo) = (pooled_size(h), pooled_size(w));
    let total = n * c * ho * wo;
    let dev = &s.device;
    let y = values.then(|| alloc::<f32>(dev, total)).transpose()?;
    let sw = switches.then(|| alloc::<u32>(dev, total)).transpose()?;
    let f = dev.get_or_load_custom_func("allcnn_pool_f32", MODULE, ptx()?)?;
    let planes = (n * c) as i64;
    let (hi, wi, hoi, woi) = (int(h, "H")?, int(w, "W")?, int(ho, "Ho")?, int(wo, "Wo")?);
    let null: u64 = 0;
    let mut b = f.builder();
    b.arg(&x);
    match &y {
        Some(y) => b.arg(y),
        None => b.arg(&null),
    };
    match &sw {
        Some(sw) => b.arg(sw),
        None => b.arg(&null),
    };
    b.arg(&planes).arg(&hi).arg(&wi).arg(&hoi).arg(&woi);
    // SAFETY: the arguments match the kernel's signature; `x` holds
    // planes * h * w values, `y` and `sw` (or null) planes * ho * wo.
    unsafe { b.launch(cfg(total)) }.w()?;
    Ok((y, sw))
}

/// The pool's forward: the pooled map.
pub(crate) fn pool_forward(
    s: &CudaStorage,
    l: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (n, c, h, w) = dims4(l)?;
    let (y, _) = pool(s, l, true, false)?;
    let y = y.expect("values were asked for");
    Ok((
        CudaStorage::wrap_cuda_slice(y, s.device.clone()),
        Shape::from((n, c, pooled_size(h), pooled_size(w))),
    ))
}

/// The pool's switches (u32 flat indices into each plane).
pub(crate) fn pool_switches(
    s: &CudaStorage,
    l: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (n, c, h, w) = dims4(l)?;
    let (_, sw) = pool(s, l, false, true)?;
    let sw = sw.expect("switches were asked for");
    Ok((
        CudaStorage::wrap_cuda_slice(sw, s.device.clone()),
        Shape::from((n, c, pooled_size(h), pooled_size(w))),
    ))
}

/// The pool's backward: `g` (the pooled map's gradient) routed back to the
/// window maxima of `x`.
pub(crate) fn pool_backward(
    x: &CudaStorage,
    lx: &Layout,
    g: &CudaStorage,
    lg: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (n, c, h, w) = dims4(lx)?;
    let (ho, wo) = (pooled_size(h), pooled_size(w));
    if lg.dims() != [n, c, ho, wo] {
        candle_core::bail!(
            "max_pool backward: gradient {:?} does not fit the pooled shape of {:?}",
            lg.dims(),
            lx.dims()
        );
    }
    let xv = f32_view(x, lx, "max_pool backward")?;
    let gv = f32_view(g, lg, "max_pool backward")?;
    let dev = &x.device;
    let total = n * c * h * w;
    let dx = alloc::<f32>(dev, total)?;
    let f = dev.get_or_load_custom_func("allcnn_pool_bwd_f32", MODULE, ptx()?)?;
    let planes = (n * c) as i64;
    let (hi, wi, hoi, woi) = (int(h, "H")?, int(w, "W")?, int(ho, "Ho")?, int(wo, "Wo")?);
    let mut b = f.builder();
    b.arg(&xv)
        .arg(&gv)
        .arg(&dx)
        .arg(&planes)
        .arg(&hi)
        .arg(&wi)
        .arg(&hoi)
        .arg(&woi);
    // SAFETY: as in `pool`; `dx` holds planes * h * w values.
    unsafe { b.launch(cfg(total)) }.w()?;
    Ok((
        CudaStorage::wrap_cuda_slice(dx, dev.clone()),
        lx.shape().clone(),
    ))
}

/// An inverted-dropout mask of `len` entries on `dev`: ChaCha8 (`key`,
/// `stream`) words from position `start`, 0 below `threshold`, `keep`
/// otherwise.
pub(crate) fn dropout_mask(
    dev: &CudaDevice,
    len: usize,
    key: [u32; 8],
    stream: u64,
    start: u64,
    threshold: u32,
    keep: f32,
) -> candle_core::Result<CudaStorage> {
    let out = alloc::<f32>(dev, len.max(1))?;
    let f = dev.get_or_load_custom_func("allcnn_dropout_mask_f32", MODULE, ptx()?)?;
    let len_i = len as i64;
    let blocks = (start as usize + len).div_ceil(16) - start as usize / 16;
    let mut b = f.builder();
    b.arg(&out).arg(&len_i);
    for k in &key {
        b.arg(k);
    }
    b.arg(&stream).arg(&start).arg(&threshold).arg(&keep);
    // SAFETY: `out` holds `len` values; each thread writes the entries of
    // its own 16-word block.
    unsafe { b.launch(cfg(blocks)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

/// The mutable f32 data of `s`, contiguous from the layout's start.
fn f32_view_mut<'a>(
    s: &'a mut CudaStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaViewMut<'a, f32>> {
    if !l.is_contiguous() || s.dtype() != DType::F32 {
        candle_core::bail!("{what}: the CUDA kernel needs a contiguous f32 tensor");
    }
    let n = l.shape().elem_count();
    Ok(s.as_cuda_slice_mut::<f32>()?
        .slice_mut(l.start_offset()..l.start_offset() + n))
}

/// `v = v * momentum + (g + w * weight_decay)` in place on `v`.
pub(crate) fn sgd_velocity(
    (v, lv): (&mut CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    momentum: f32,
    weight_decay: f32,
) -> candle_core::Result<()> {
    let total = lv.shape().elem_count();
    if lg.shape().elem_count() != total || lw.shape().elem_count() != total {
        candle_core::bail!(
            "sgd velocity: shapes {:?} {:?} {:?} differ",
            lv.dims(),
            lg.dims(),
            lw.dims()
        );
    }
    let dev = v.device.clone();
    let gv = f32_view(g, lg, "sgd velocity")?;
    let wv = f32_view(w, lw, "sgd velocity")?;
    let mut vv = f32_view_mut(v, lv, "sgd velocity")?;
    let f = dev.get_or_load_custom_func("allcnn_sgd_velocity_f32", MODULE, ptx()?)?;
    let total_i = total as i64;
    let mut b = f.builder();
    b.arg(&mut vv)
        .arg(&gv)
        .arg(&wv)
        .arg(&total_i)
        .arg(&momentum)
        .arg(&weight_decay);
    // SAFETY: the three buffers hold `total` values.
    unsafe { b.launch(cfg(total)) }.w()?;
    Ok(())
}

/// `w -= v * lr` in place on `w`.
pub(crate) fn sgd_weight(
    (w, lw): (&mut CudaStorage, &Layout),
    (v, lv): (&CudaStorage, &Layout),
    lr: f32,
) -> candle_core::Result<()> {
    let total = lw.shape().elem_count();
    if lv.shape().elem_count() != total {
        candle_core::bail!("sgd weights: shapes {:?} {:?} differ", lw.dims(), lv.dims());
    }
    let dev = w.device.clone();
    let vv = f32_view(v, lv, "sgd weights")?;
    let mut wv = f32_view_mut(w, lw, "sgd weights")?;
    let f = dev.get_or_load_custom_func("allcnn_sgd_weight_f32", MODULE, ptx()?)?;
    let total_i = total as i64;
    let mut b = f.builder();
    b.arg(&mut wv).arg(&vv).arg(&total_i).arg(&lr);
    // SAFETY: both buffers hold `total` values.
    unsafe { b.launch(cfg(total)) }.w()?;
    Ok(())
}

/// `y <- y + bias[c]`, rectified when `relu`, in place on `y` `[N, C, H, W]`.
pub(crate) fn bias_act(
    dev: &CudaDevice,
    y: &mut CudaSlice<f32>,
    bias: &CudaView<'_, f32>,
    dims: [usize; 4],
    relu: bool,
) -> candle_core::Result<()> {
    let [n, c, h, w] = dims;
    let total = n * c * h * w;
    let f = dev.get_or_load_custom_func("allcnn_bias_act_f32", MODULE, ptx()?)?;
    let (total_i, ci, plane, relu_i) = (total as i64, int(c, "C")?, (h * w) as i64, relu as i32);
    let mut b = f.builder();
    b.arg(y)
        .arg(bias)
        .arg(&total_i)
        .arg(&ci)
        .arg(&plane)
        .arg(&relu_i);
    // SAFETY: `y` holds n * c * h * w values, `bias` c.
    unsafe { b.launch(cfg(total)) }.w()?;
    Ok(())
}

/// `g * [y > 0]` (the ReLU's backward given its output `y`).
pub(crate) fn relu_mask(
    g: &CudaStorage,
    lg: &Layout,
    y: &CudaStorage,
    ly: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    if lg.dims() != ly.dims() {
        candle_core::bail!(
            "relu mask: gradient {:?} and output {:?} differ in shape",
            lg.dims(),
            ly.dims()
        );
    }
    let gv = f32_view(g, lg, "relu mask")?;
    let yv = f32_view(y, ly, "relu mask")?;
    let dev = &g.device;
    let total = lg.shape().elem_count();
    let out = alloc::<f32>(dev, total)?;
    let f = dev.get_or_load_custom_func("allcnn_relu_mask_f32", MODULE, ptx()?)?;
    let total_i = total as i64;
    let mut b = f.builder();
    b.arg(&gv).arg(&yv).arg(&out).arg(&total_i);
    // SAFETY: all three buffers hold `total` values.
    unsafe { b.launch(cfg(total)) }.w()?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        lg.shape().clone(),
    ))
}

/// The sums of `g` `[N, C, H, W]` over everything but the channel: `[C]`.
pub(crate) fn channel_sums(
    g: &CudaStorage,
    lg: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (n, c, h, w) = dims4(lg)?;
    let gv = f32_view(g, lg, "bias gradient")?;
    let dev = &g.device;
    let out = alloc::<f32>(dev, c)?;
    let f = dev.get_or_load_custom_func("allcnn_channel_sum_f32", MODULE, ptx()?)?;
    let (ni, ci, plane) = (int(n, "N")?, int(c, "C")?, (h * w) as i64);
    let mut b = f.builder();
    b.arg(&gv).arg(&out).arg(&ni).arg(&ci).arg(&plane);
    let launch = LaunchConfig {
        grid_dim: (c.max(1) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: one block per channel, 256 threads (the kernel's shared array);
    // `g` holds n * c * h * w values, `out` c.
    unsafe { b.launch(launch) }.w()?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(c),
    ))
}

/// The error of a CUDA-only op called on CPU tensors.
pub(crate) fn not_on_cpu<T>(op: &str) -> candle_core::Result<T> {
    candle_core::bail!("{op}: a CUDA op called on CPU tensors")
}

/// `g * [y > 0]` as an op on CUDA tensors (no autograd of its own).
pub(crate) struct ReluMask;

impl candle_core::CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "allcnn-cuda-relu-mask"
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
        g: &CudaStorage,
        lg: &Layout,
        y: &CudaStorage,
        ly: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        relu_mask(g, lg, y, ly)
    }
}

/// The per-channel sums of an `[N, C, H, W]` CUDA tensor, `[C]` (no
/// autograd of its own).
pub(crate) struct ChannelSums;

impl candle_core::CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        "allcnn-cuda-channel-sums"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        not_on_cpu(self.name())
    }

    fn cuda_fwd(&self, g: &CudaStorage, lg: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        channel_sums(g, lg)
    }
}

#[cfg(test)]
mod tests {
    /// NVRTC (no GPU needed) accepts the kernels and emits every entry point.
    #[test]
    fn kernels_compile_with_nvrtc() {
        let ptx = super::ptx().unwrap();
        for name in [
            "allcnn_dropout_mask_f32",
            "allcnn_pool_f32",
            "allcnn_pool_bwd_f32",
            "allcnn_bias_act_f32",
            "allcnn_relu_mask_f32",
            "allcnn_channel_sum_f32",
            "allcnn_sgd_velocity_f32",
            "allcnn_sgd_weight_f32",
        ] {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "{name} missing from the PTX"
            );
        }
    }
}
