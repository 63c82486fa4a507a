//! Convolutions as tensor ops (dfdx's conv kernels need nightly Rust).
//!
//! Feature maps are kept as tokens `[batch, height * width, channels]` (row-major grid), the
//! layout every transformer here consumes; NCHW tensors appear only at the model boundary.
//! Each convolution is a reshape / permute / shifted-slice "im2col" followed by one matmul, so
//! gradients flow through dfdx's tape like any other op. Weights keep PyTorch's layouts:
//! `Conv2d` `[out, in, kh, kw]`, `ConvTranspose2d` `[in, out, kh, kw]`.
use crate::layers::{realize, Tokens};
use dfdx::prelude::*;
use pixel_core::params::{join, ParamVisitor, Params};
use pixel_core::Result;
use rand_distr::Uniform;

/// A feature map stored as row-major tokens.
#[derive(Debug, Clone)]
pub struct FeatureMap<C: Dim, D: Device<f32>, T = NoneTape> {
    /// `[batch, height * width, channels]`.
    pub tokens: Tokens<C, D, T>,
    pub height: usize,
    pub width: usize,
}

/// An NCHW image batch `[batch, channels, height, width]` (PyTorch's `pixel_values`).
pub type Images<D, T = NoneTape> = Tensor<(usize, usize, usize, usize), f32, D, T>;

/// Checks that an image batch called `name` of `shape` is `[B, channels, size, size]` with
/// `B >= 1`, as a backbone built for `size`-pixel images takes it (HF's and timm's encoders
/// reject other sizes too). The error names the tensor, the expected and the actual shape.
pub fn check_images(
    name: &str,
    shape: &[usize],
    channels: usize,
    size: usize,
) -> crate::VisionResult<()> {
    let fits = matches!(shape, &[b, c, h, w] if b >= 1 && c == channels && h == size && w == size);
    if fits {
        Ok(())
    } else {
        Err(crate::VisionError::Input(format!(
            "`{name}` must be [B, {channels}, {size}, {size}] with B >= 1, it is {shape:?}"
        )))
    }
}

impl<C: Dim, D: Device<f32>, T: Tape<f32, D>> FeatureMap<C, D, T> {
    pub fn new(tokens: Tokens<C, D, T>, height: usize, width: usize) -> Self {
        assert_eq!(
            tokens.shape().1,
            height * width,
            "{} tokens do not form a {height}x{width} grid",
            tokens.shape().1
        );
        FeatureMap {
            tokens,
            height,
            width,
        }
    }

    pub fn batch(&self) -> usize {
        self.tokens.shape().0
    }

    pub fn channels(&self) -> C {
        self.tokens.shape().2
    }

    /// `[batch, height, width, channels]`.
    pub fn to_nhwc(self) -> Tensor<(usize, usize, usize, C), f32, D, T> {
        let (b, _, c) = *self.tokens.shape();
        self.tokens.reshape_like(&(b, self.height, self.width, c))
    }

    /// `[batch, channels, height, width]`, the reference implementations' layout.
    pub fn to_nchw(self) -> Tensor<(usize, C, usize, usize), f32, D, T> {
        let (b, _, c) = *self.tokens.shape();
        let (h, w) = (self.height, self.width);
        self.tokens
            .permute::<_, Axes3<0, 2, 1>>()
            .reshape_like(&(b, c, h, w))
    }

    /// Applies `f` to the tokens, keeping the grid.
    pub fn map<C2: Dim>(
        self,
        f: impl FnOnce(Tokens<C, D, T>) -> Tokens<C2, D, T>,
    ) -> FeatureMap<C2, D, T> {
        let (height, width) = (self.height, self.width);
        FeatureMap::new(f(self.tokens), height, width)
    }

    /// The same map with a run-time channel dim.
    pub fn realize_channels(self) -> FeatureMap<usize, D, T> {
        let (height, width) = (self.height, self.width);
        FeatureMap::new(realize(self.tokens), height, width)
    }
}

/// NCHW images -> a token feature map with `channels` channels.
pub fn images_to_map<D: Device<f32>, T: Tape<f32, D>>(
    images: Images<D, T>,
) -> FeatureMap<usize, D, T> {
    let (b, c, h, w) = *images.shape();
    let tokens = images
        .reshape_like(&(b, c, h * w))
        .permute::<_, Axes3<0, 2, 1>>()
        .reshape_like(&(b, h * w, c));
    FeatureMap::new(tokens, h, w)
}

/// Non-overlapping `k x k` patches of a map: `[b, (h/k)(w/k), c*k*k]`, columns ordered
/// `(channel, ky, kx)` like a PyTorch conv weight `[out, in, kh, kw]` flattened. Rows and columns
/// beyond a multiple of `k` are dropped, as a stride-`k` convolution does.
pub fn patchify<C: Dim, D: Device<f32>, T: Tape<f32, D>>(
    map: FeatureMap<C, D, T>,
    k: usize,
) -> FeatureMap<usize, D, T> {
    let (hp, wp) = (map.height / k, map.width / k);
    let c = map.channels().size();
    let b = map.batch();
    let mut x: Tensor<(usize, usize, usize, usize), f32, D, T> = realize(map.to_nhwc());
    if hp * k != x.shape().1 || wp * k != x.shape().2 {
        x = x.slice((.., 0..hp * k, 0..wp * k, ..));
    }
    let tokens = x
        .reshape_like(&(b, hp, k, wp, k, c))
        .permute::<_, Axes6<0, 1, 3, 5, 2, 4>>()
        .reshape_like(&(b, hp * wp, c * k * k));
    FeatureMap::new(tokens, hp, wp)
}

/// `k x k` neighbourhoods (stride 1, zero padding `k / 2`) of every position: `[b, hw, c*k*k]`,
/// columns ordered `(channel, ky, kx)`; `k` must be odd.
pub fn im2col_same<C: Dim, D: Device<f32>, T: Tape<f32, D>>(
    map: FeatureMap<C, D, T>,
    k: usize,
) -> FeatureMap<usize, D, T> {
    assert!(
        k % 2 == 1,
        "same-padding im2col needs an odd kernel, got {k}"
    );
    let (h, w, b) = (map.height, map.width, map.batch());
    let c = map.channels().size();
    let pad = k / 2;
    let dev = map.tokens.device().clone();
    let x: Tensor<(usize, usize, usize, usize), f32, D, T> = realize(map.to_nhwc());
    let x = if pad > 0 {
        let rows: Tensor<(usize, usize, usize, usize), f32, D> = dev.zeros_like(&(b, pad, w, c));
        let x = prepend(rows.clone(), x, 1);
        let x = (x, rows).concat_along(Axis::<1>);
        let cols: Tensor<(usize, usize, usize, usize), f32, D> =
            dev.zeros_like(&(b, h + 2 * pad, pad, c));
        let x = prepend(cols.clone(), x, 2);
        (x, cols).concat_along(Axis::<2>)
    } else {
        x
    };
    // dfdx 0.13's CPU `slice` backward assigns its gradient into the source's instead of adding
    // it (found by the PyTorch twin), so overlapping views of one tensor would keep only one
    // view's gradient. With a tape, each view is cut from its own copy (`+ 0.0`), whose
    // backward adds into `x`'s gradient.
    let mut shifted = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            let source = if T::OWNS_TAPE {
                x.retaped::<T>() + 0.0
            } else {
                x.retaped::<T>()
            };
            shifted.push(source.slice((.., ky..ky + h, kx..kx + w, ..)));
        }
    }
    // Keep `x`'s own tape (its history) by adding it into the first shifted view.
    let first = shifted.remove(0);
    let (first, _) = crate::layers::merge_tapes(first, x);
    shifted.insert(0, first);
    let stacked: Tensor<(usize, usize, usize, usize, usize), f32, D, T> = shifted.stack();
    let tokens = stacked
        .permute::<_, Axes5<1, 2, 3, 4, 0>>()
        .reshape_like(&(b, h * w, c * k * k));
    FeatureMap::new(tokens, h, w)
}

/// `(front, x)` concatenated along `axis` (1 or 2) with `x`'s tape, which dfdx wants on the
/// left operand: the tape moves onto `front` first.
fn prepend<D: Device<f32>, T: Tape<f32, D>>(
    front: Tensor<(usize, usize, usize, usize), f32, D>,
    x: Tensor<(usize, usize, usize, usize), f32, D, T>,
    axis: usize,
) -> Tensor<(usize, usize, usize, usize), f32, D, T> {
    let (x, tape) = x.split_tape();
    let front = front.put_tape(tape);
    match axis {
        1 => (front, x).concat_along(Axis::<1>),
        2 => (front, x).concat_along(Axis::<2>),
        _ => unreachable!("prepend only pads rows or columns"),
    }
}

/// `nn.Conv2d` for the two shapes the models use: `stride == kernel`, no padding (patch
/// embeddings, SAM's mask downscaling) and `stride == 1`, `padding == kernel / 2` (SAM's neck).
#[derive(Debug, Clone)]
pub struct Conv2d<I: Dim, O: Dim, D: Device<f32>> {
    /// `[out, in, kh, kw]`.
    pub weight: Tensor<(O, I, usize, usize), f32, D>,
    pub bias: Option<Tensor<(O,), f32, D>>,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl<I: Dim, O: Dim, D: Device<f32>> Conv2d<I, O, D> {
    /// PyTorch's default init bound `1/sqrt(in * k * k)`.
    pub fn new(
        dev: &D,
        input: I,
        output: O,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Self {
        assert!(
            (stride == kernel && padding == 0) || (stride == 1 && padding * 2 + 1 == kernel),
            "only stride == kernel (no padding) or stride 1 with same padding are supported, got kernel {kernel}, stride {stride}, padding {padding}"
        );
        let bound = 1.0 / ((input.size() * kernel * kernel).max(1) as f32).sqrt();
        let dist = Uniform::new(-bound, bound);
        Conv2d {
            weight: dev.sample_like(&(output, input, kernel, kernel), dist),
            bias: bias.then(|| dev.sample_like(&(output,), dist)),
            kernel,
            stride,
            padding,
        }
    }

    pub fn forward<T: Tape<f32, D>>(&self, map: FeatureMap<I, D, T>) -> FeatureMap<O, D, T> {
        let (out, cin, _, _) = *self.weight.shape();
        let k = self.kernel;
        let cols = if self.stride == k {
            patchify(map, k)
        } else {
            im2col_same(map, k)
        };
        let (h, w) = (cols.height, cols.width);
        let weight = self
            .weight
            .retaped::<T>()
            .reshape_like(&(out, cin.size() * k * k))
            .permute::<_, Axes2<1, 0>>();
        let y = cols.tokens.matmul(weight);
        let y = match &self.bias {
            Some(bias) => {
                let shape = *y.shape();
                y + bias.retaped::<T>().broadcast_like::<_, Axes2<0, 1>>(&shape)
            }
            None => y,
        };
        FeatureMap::new(y, h, w)
    }

    /// Convolves NCHW images (e.g. a patch embedding on `pixel_values`).
    pub fn forward_images<T: Tape<f32, D>>(&self, images: Images<D, T>) -> FeatureMap<O, D, T> {
        let (_, cin, _, _) = *self.weight.shape();
        let map = images_to_map(images);
        let map: FeatureMap<I, D, T> = FeatureMap::new(realize(map.tokens), map.height, map.width);
        assert_eq!(
            map.channels().size(),
            cin.size(),
            "image channels do not fit the conv"
        );
        self.forward(map)
    }
}

impl<I: Dim, O: Dim, D: Device<f32>> Params<D> for Conv2d<I, O, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        v.visit(&join(prefix, "weight"), &mut self.weight)?;
        self.bias.visit_params(&join(prefix, "bias"), v)
    }
}

/// `nn.ConvTranspose2d` with `stride == kernel` (SAM's output upscaling, k = s = 2): every input
/// position writes its own `k x k` block, so the op is one matmul and a pixel shuffle.
#[derive(Debug, Clone)]
pub struct ConvTranspose2d<I: Dim, O: Dim, D: Device<f32>> {
    /// `[in, out, kh, kw]`.
    pub weight: Tensor<(I, O, usize, usize), f32, D>,
    pub bias: Option<Tensor<(O,), f32, D>>,
    pub kernel: usize,
}

impl<I: Dim, O: Dim, D: Device<f32>> ConvTranspose2d<I, O, D> {
    pub fn new(dev: &D, input: I, output: O, kernel: usize, bias: bool) -> Self {
        let bound = 1.0 / ((output.size() * kernel * kernel).max(1) as f32).sqrt();
        let dist = Uniform::new(-bound, bound);
        ConvTranspose2d {
            weight: dev.sample_like(&(input, output, kernel, kernel), dist),
            bias: bias.then(|| dev.sample_like(&(output,), dist)),
            kernel,
        }
    }

    pub fn forward<T: Tape<f32, D>>(&self, map: FeatureMap<I, D, T>) -> FeatureMap<O, D, T> {
        let (cin, out, _, _) = *self.weight.shape();
        let k = self.kernel;
        let (b, h, w) = (map.batch(), map.height, map.width);
        let weight = self
            .weight
            .retaped::<T>()
            .reshape_like(&(cin, out.size() * k * k));
        let y = map
            .tokens
            .matmul(weight)
            .reshape_like(&(b, h, w, out.size(), k, k))
            .permute::<_, Axes6<0, 1, 4, 2, 5, 3>>()
            .reshape_like(&(b, h * k * w * k, out));
        let y = match &self.bias {
            Some(bias) => {
                let shape = *y.shape();
                y + bias.retaped::<T>().broadcast_like::<_, Axes2<0, 1>>(&shape)
            }
            None => y,
        };
        FeatureMap::new(y, h * k, w * k)
    }
}

impl<I: Dim, O: Dim, D: Device<f32>> Params<D> for ConvTranspose2d<I, O, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        v.visit(&join(prefix, "weight"), &mut self.weight)?;
        self.bias.visit_params(&join(prefix, "bias"), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_core::testing::assert_close;
    use proptest::prelude::*;

    /// Direct-loop conv2d over NCHW `x` (`[b, c, h, w]`) with weight `[o, c, k, k]`.
    #[allow(clippy::too_many_arguments)]
    fn direct_conv(
        x: &[f32],
        (b, c, h, w): (usize, usize, usize, usize),
        weight: &[f32],
        bias: Option<&[f32]>,
        o: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> (Vec<f32>, usize, usize) {
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        let mut out = vec![0.0; b * o * ho * wo];
        for bi in 0..b {
            for oi in 0..o {
                for y in 0..ho {
                    for xo in 0..wo {
                        let mut acc = bias.map_or(0.0, |bv| bv[oi]);
                        for ci in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (y * stride + ky) as isize - pad as isize;
                                    let ix = (xo * stride + kx) as isize - pad as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    acc += x[((bi * c + ci) * h + iy as usize) * w + ix as usize]
                                        * weight[((oi * c + ci) * k + ky) * k + kx];
                                }
                            }
                        }
                        out[((bi * o + oi) * ho + y) * wo + xo] = acc;
                    }
                }
            }
        }
        (out, ho, wo)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_conv(
        seed: u64,
        b: usize,
        c: usize,
        h: usize,
        w: usize,
        o: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) {
        let dev: Cpu = Cpu::seed_from_u64(seed);
        let conv = Conv2d::<usize, usize, Cpu>::new(&dev, c, o, k, stride, pad, true);
        let x: Images<Cpu> = dev.sample_normal_like(&(b, c, h, w));
        let got = images_to_map(x.clone());
        let got = conv.forward(got).to_nchw().as_vec();
        let (want, _, _) = direct_conv(
            &x.as_vec(),
            (b, c, h, w),
            &conv.weight.as_vec(),
            Some(&conv.bias.as_ref().unwrap().as_vec()),
            o,
            k,
            stride,
            pad,
        );
        assert_close(&got, &want, 1e-4);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10))]
        #[test]
        fn strided_conv_as_matmul_equals_direct_loop(seed in 0u64..1000, k in 1usize..4, hp in 1usize..4, wp in 1usize..4, extra in 0usize..2) {
            run_conv(seed, 2, 3, hp * k + extra, wp * k + extra, 4, k, k, 0);
        }

        #[test]
        fn same_padded_conv_as_matmul_equals_direct_loop(seed in 0u64..1000, k in prop::sample::select(vec![1usize, 3, 5]), h in 1usize..6, w in 1usize..6) {
            run_conv(seed, 2, 3, h, w, 2, k, 1, k / 2);
        }

        #[test]
        fn transposed_conv_as_matmul_equals_direct_loop(seed in 0u64..1000, h in 1usize..4, w in 1usize..4, k in 1usize..4) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let (b, c, o) = (2, 3, 2);
            let conv = ConvTranspose2d::<usize, usize, Cpu>::new(&dev, c, o, k, true);
            let x: Images<Cpu> = dev.sample_normal_like(&(b, c, h, w));
            let got = conv.forward(images_to_map(x.clone())).to_nchw().as_vec();
            let (xv, wv, bv) = (x.as_vec(), conv.weight.as_vec(), conv.bias.as_ref().unwrap().as_vec());
            let (ho, wo) = (h * k, w * k);
            let mut want = vec![0.0f32; b * o * ho * wo];
            for bi in 0..b { for oi in 0..o { for y in 0..ho { for xx in 0..wo {
                let (iy, ky, ix, kx) = (y / k, y % k, xx / k, xx % k);
                let mut acc = bv[oi];
                for ci in 0..c {
                    acc += xv[((bi * c + ci) * h + iy) * w + ix] * wv[((ci * o + oi) * k + ky) * k + kx];
                }
                want[((bi * o + oi) * ho + y) * wo + xx] = acc;
            }}}}
            assert_close(&got, &want, 1e-4);
        }
    }

    /// The input gradient of a same-padded conv, against direct loops: each input position
    /// sums what all k x k output positions that read it send back (overlapping windows).
    #[test]
    fn same_padded_conv_input_gradient_equals_direct_loop() {
        let dev: Cpu = Cpu::seed_from_u64(3);
        let (b, c, h, w, o, k) = (2, 3, 4, 5, 2, 3);
        let pad = k / 2;
        let conv = Conv2d::<usize, usize, Cpu>::new(&dev, c, o, k, 1, pad, false);
        let x: Images<Cpu> = dev.sample_normal_like(&(b, c, h, w));
        let r: Images<Cpu> = dev.sample_normal_like(&(b, o, h, w));
        let out = conv.forward(images_to_map(x.leaky_trace())).to_nchw();
        let grads = (out * r.clone()).sum().backward();
        let got = grads.get(&x).as_vec();
        let (rv, wv) = (r.as_vec(), conv.weight.as_vec());
        let mut want = vec![0.0f32; b * c * h * w];
        for bi in 0..b {
            for oi in 0..o {
                for y in 0..h {
                    for xx in 0..w {
                        for ci in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = (y + ky, xx + kx);
                                    if iy < pad || ix < pad || iy - pad >= h || ix - pad >= w {
                                        continue;
                                    }
                                    want[((bi * c + ci) * h + iy - pad) * w + ix - pad] += rv
                                        [((bi * o + oi) * h + y) * w + xx]
                                        * wv[((oi * c + ci) * k + ky) * k + kx];
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_close(&got, &want, 1e-4);
    }

    #[test]
    fn conv_weights_and_inputs_receive_gradients() {
        let dev: Cpu = Cpu::seed_from_u64(1);
        let conv = Conv2d::<usize, usize, Cpu>::new(&dev, 2, 3, 3, 1, 1, false);
        let x: Images<Cpu> = dev.sample_normal_like(&(1, 2, 4, 5));
        let loss = conv
            .forward(images_to_map(x.leaky_trace()))
            .tokens
            .square()
            .sum();
        let grads = loss.backward();
        assert!(grads
            .get(&conv.weight)
            .as_vec()
            .iter()
            .all(|g| g.is_finite()));
        assert!(grads.get(&conv.weight).as_vec().iter().any(|g| *g != 0.0));
        assert!(grads.get(&x).as_vec().iter().any(|g| *g != 0.0));
    }
}
