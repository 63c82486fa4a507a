//! Named parameters: every module lists its tensors under the reference checkpoint's names.
//!
//! One trait, [`Params`], serves checkpoint loading and saving, optimizers, freezing and
//! parameter counts. A module visits its fields in forward order with the names the reference
//! implementation uses (`encoder.block.0.layer.0.SelfAttention.q.weight`), so a reader can check
//! code against a checkpoint line by line.
use crate::error::{CoreError, Result};
use dfdx::prelude::*;

/// One parameter tensor as visitors see it, whatever its shape.
///
/// An object-safe view, so that [`Params`] and [`ParamVisitor`] are object-safe too: a model can
/// hold parts it knows only as trait objects (output heads registered by name) and still list,
/// load, save and optimise them like its typed parts.
pub trait ParamTensor<D: Device<f32>> {
    /// The dims of the tensor.
    fn dims(&self) -> Vec<usize>;
    /// The number of scalars.
    fn numel(&self) -> usize {
        self.dims().iter().product()
    }
    /// The values, row-major, on the host.
    fn values(&self) -> Vec<f32>;
    /// Overwrites the values (row-major); errors when `values` has the wrong length.
    fn set_values(&mut self, values: &[f32]) -> Result<()>;
    /// Adds this tensor's slot to `grads`, so a backward pass records its gradient.
    fn alloc_grad(&self, grads: &mut Gradients<f32, D>) -> Result<()>;
    /// This tensor's gradient in `grads`, on the host.
    ///
    /// Panics, as dfdx's `Gradients::get` does, when `grads` has no slot for the tensor.
    fn grad(&self, grads: &Gradients<f32, D>) -> Vec<f32>;
    /// Keeps this tensor frozen on the host as `dtype` where its kind allows it (a linear
    /// layer's weight on the CPU device: [`crate::nn::LinearWeight::Host`]); says whether it
    /// did. Such a tensor can no longer be trained.
    fn keep_frozen_on_host(&mut self, _dtype: crate::host_matrix::Dtype) -> Result<bool> {
        Ok(false)
    }
    /// The type this tensor is kept in on the host when it is frozen there.
    fn host_dtype(&self) -> Option<crate::host_matrix::Dtype> {
        None
    }
}

impl<S: Shape, D: Device<f32>> ParamTensor<D> for Tensor<S, f32, D> {
    fn dims(&self) -> Vec<usize> {
        shape_of(self)
    }

    fn values(&self) -> Vec<f32> {
        self.as_vec()
    }

    fn set_values(&mut self, values: &[f32]) -> Result<()> {
        if values.len() != self.shape().num_elements() {
            return Err(CoreError::Shape(format!(
                "{} values for a tensor of shape {:?}",
                values.len(),
                shape_of(self)
            )));
        }
        self.copy_from(values);
        Ok(())
    }

    fn alloc_grad(&self, grads: &mut Gradients<f32, D>) -> Result<()> {
        grads
            .try_alloc_for(self)
            .map_err(|e| CoreError::Invalid(format!("cannot allocate a gradient: {e:?}")))
    }

    fn grad(&self, grads: &Gradients<f32, D>) -> Vec<f32> {
        grads.get(self).as_vec()
    }
}

/// Something that is shown every named tensor of a module.
pub trait ParamVisitor<D: Device<f32>> {
    /// `name` is the full dotted path of the tensor.
    fn visit(&mut self, name: &str, tensor: &mut dyn ParamTensor<D>) -> Result<()>;
}

/// A module with named parameters. Object-safe: `Box<dyn Params<D>>` and trait objects with
/// `Params` as a supertrait work with checkpoints and optimizers.
pub trait Params<D: Device<f32>> {
    /// Shows each tensor to `visitor`, named `prefix.<own name>`.
    fn visit_params(&mut self, prefix: &str, visitor: &mut dyn ParamVisitor<D>) -> Result<()>;
}

/// A boxed module (a trait object, typically) has the parameters of what it holds.
impl<D: Device<f32>, M: Params<D> + ?Sized> Params<D> for Box<M> {
    fn visit_params(&mut self, prefix: &str, visitor: &mut dyn ParamVisitor<D>) -> Result<()> {
        (**self).visit_params(prefix, visitor)
    }
}

/// Joins a prefix and a name with a dot, skipping an empty prefix.
pub fn join(prefix: &str, name: &str) -> String {
    match (prefix.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}.{name}"),
    }
}

impl<D: Device<f32>, S: Shape> Params<D> for Tensor<S, f32, D> {
    fn visit_params(&mut self, prefix: &str, visitor: &mut dyn ParamVisitor<D>) -> Result<()> {
        visitor.visit(prefix, self)
    }
}

/// A stack of layers is named `prefix.0`, `prefix.1`, ... as in PyTorch's `ModuleList`.
impl<D: Device<f32>, M: Params<D>> Params<D> for Vec<M> {
    fn visit_params(&mut self, prefix: &str, visitor: &mut dyn ParamVisitor<D>) -> Result<()> {
        for (i, m) in self.iter_mut().enumerate() {
            m.visit_params(&join(prefix, &i.to_string()), visitor)?;
        }
        Ok(())
    }
}

/// An optional submodule has no tensors when absent.
impl<D: Device<f32>, M: Params<D>> Params<D> for Option<M> {
    fn visit_params(&mut self, prefix: &str, visitor: &mut dyn ParamVisitor<D>) -> Result<()> {
        match self {
            Some(m) => m.visit_params(prefix, visitor),
            None => Ok(()),
        }
    }
}

/// Name and shape of one parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<usize>,
    /// The type it is kept in on the host when frozen there; `None` for an f32 tensor.
    pub host_dtype: Option<crate::host_matrix::Dtype>,
}

impl ParamInfo {
    /// An f32 tensor.
    pub fn new(name: impl Into<String>, shape: Vec<usize>) -> Self {
        ParamInfo {
            name: name.into(),
            shape,
            host_dtype: None,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The bytes its values take.
    pub fn bytes(&self) -> usize {
        self.numel() * self.host_dtype.map_or(4, |d| d.bytes())
    }
}

struct Lister(Vec<ParamInfo>);

impl<D: Device<f32>> ParamVisitor<D> for Lister {
    fn visit(&mut self, name: &str, tensor: &mut dyn ParamTensor<D>) -> Result<()> {
        self.0.push(ParamInfo {
            name: name.to_string(),
            shape: tensor.dims(),
            host_dtype: tensor.host_dtype(),
        });
        Ok(())
    }
}

/// Every parameter of `module` with its shape, in visiting order.
pub fn list_params<D: Device<f32>, M: Params<D> + ?Sized>(module: &mut M) -> Vec<ParamInfo> {
    let mut lister = Lister(Vec::new());
    // Listing cannot fail: the visitor never returns an error.
    let _ = module.visit_params("", &mut lister);
    lister.0
}

/// Total number of scalars in the parameters of `module`.
pub fn count_params<D: Device<f32>, M: Params<D> + ?Sized>(module: &mut M) -> usize {
    list_params(module).iter().map(ParamInfo::numel).sum()
}

/// The parameter list of a module whose blocks `prefix.0.`, `prefix.1.`, ... repeat, from the
/// list of a copy built with fewer blocks: block `i` of `count` gets the tensors of built block
/// `template(i)`, renamed. Listing a large model this way holds one block of each kind in memory
/// instead of all of them. The built blocks' entries must be contiguous in `built` (a `Vec` of
/// blocks is visited in one run); the entries before and after them are kept as they are.
pub fn repeat_blocks(
    built: Vec<ParamInfo>,
    prefix: &str,
    count: usize,
    template: impl Fn(usize) -> usize,
) -> Vec<ParamInfo> {
    let head = format!("{prefix}.");
    let block_of = |name: &str| -> Option<(usize, String)> {
        let rest = name.strip_prefix(&head)?;
        let (index, tail) = rest.split_once('.')?;
        Some((index.parse().ok()?, tail.to_string()))
    };
    let first = built.iter().position(|p| block_of(&p.name).is_some());
    let Some(first) = first else {
        return built;
    };
    let end = first
        + built[first..]
            .iter()
            .take_while(|p| block_of(&p.name).is_some())
            .count();
    let mut blocks: Vec<Vec<(String, &ParamInfo)>> = Vec::new();
    for p in &built[first..end] {
        let (index, tail) = block_of(&p.name).expect("inside the run of blocks");
        if blocks.len() <= index {
            blocks.resize(index + 1, Vec::new());
        }
        blocks[index].push((tail, p));
    }
    let mut out = built[..first].to_vec();
    for i in 0..count {
        for (tail, p) in &blocks[template(i)] {
            out.push(ParamInfo {
                name: format!("{head}{i}.{tail}"),
                ..(*p).clone()
            });
        }
    }
    out.extend_from_slice(&built[end..]);
    out
}

/// Tensors frozen on the host ([`keep_frozen_on_host`]): how many, and their scalars and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostFrozen {
    pub tensors: usize,
    pub scalars: usize,
    pub bytes: usize,
}

impl HostFrozen {
    fn add<D: Device<f32>>(&mut self, tensor: &dyn ParamTensor<D>) {
        if let Some(dtype) = tensor.host_dtype() {
            self.tensors += 1;
            self.scalars += tensor.numel();
            self.bytes += tensor.numel() * dtype.bytes();
        }
    }
}

/// The tensors of `module` frozen on the host.
pub fn frozen_on_host<D: Device<f32>, M: Params<D> + ?Sized>(module: &mut M) -> HostFrozen {
    struct Counter(HostFrozen);
    impl<D: Device<f32>> ParamVisitor<D> for Counter {
        fn visit(&mut self, _: &str, tensor: &mut dyn ParamTensor<D>) -> Result<()> {
            self.0.add(tensor);
            Ok(())
        }
    }
    let mut counter = Counter(HostFrozen::default());
    // Counting cannot fail: the visitor never returns an error.
    let _ = module.visit_params("", &mut counter);
    counter.0
}

/// Keeps every frozen (not `trainable`) linear weight of `module`, whose tensors are named
/// `prefix.<name>`, on the host as `dtype`
/// ([`crate::nn::LinearWeight::Host`]): a frozen T5-XL then takes 5.7 GB in bf16 instead of
/// 11.4 GB, and its backward pass allocates no weight gradients. Other frozen tensors (norms,
/// embeddings, biases) stay as they are. CPU device only.
pub fn keep_frozen_on_host<D: Device<f32>, M: Params<D> + ?Sized>(
    module: &mut M,
    prefix: &str,
    trainable: &Trainable,
    dtype: crate::host_matrix::Dtype,
) -> Result<HostFrozen> {
    struct Freezer<'a> {
        trainable: &'a Trainable,
        dtype: crate::host_matrix::Dtype,
        moved: HostFrozen,
    }
    impl<D: Device<f32>> ParamVisitor<D> for Freezer<'_> {
        fn visit(&mut self, name: &str, tensor: &mut dyn ParamTensor<D>) -> Result<()> {
            if self.trainable.is_trainable(name) {
                return Ok(());
            }
            if tensor
                .keep_frozen_on_host(self.dtype)
                .map_err(|e| CoreError::Invalid(format!("`{name}`: {e}")))?
            {
                self.moved.add(tensor);
            }
            Ok(())
        }
    }
    let mut freezer = Freezer {
        trainable,
        dtype,
        moved: HostFrozen::default(),
    };
    module.visit_params(prefix, &mut freezer)?;
    Ok(freezer.moved)
}

/// The dims of a tensor as a vector.
pub fn shape_of<S: Shape, D: Device<f32>, T>(tensor: &Tensor<S, f32, D, T>) -> Vec<usize> {
    tensor.shape().concrete().into_iter().collect()
}

/// Which parameters an optimizer may change, by name.
///
/// Rules are glob patterns over dotted names (`*` matches any run of characters); the last rule
/// that matches a name decides, and a name no rule matches is trainable. This expresses the
/// paper's set-ups directly: `["lm.*" => frozen, "lm.*lora_*" => trainable]` is LoRA on a frozen LM.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trainable {
    rules: Vec<(String, bool)>,
}

impl Trainable {
    /// Everything trainable.
    pub fn all() -> Self {
        Trainable::default()
    }

    /// Adds a rule that freezes names matching `pattern`.
    pub fn freeze(mut self, pattern: &str) -> Self {
        self.rules.push((pattern.to_string(), false));
        self
    }

    /// Adds a rule that makes names matching `pattern` trainable.
    pub fn train(mut self, pattern: &str) -> Self {
        self.rules.push((pattern.to_string(), true));
        self
    }

    pub fn is_trainable(&self, name: &str) -> bool {
        self.rules
            .iter()
            .rev()
            .find(|(pattern, _)| glob_match(pattern, name))
            .is_none_or(|(_, trainable)| *trainable)
    }
}

/// Glob match where `*` stands for any run of characters (dots included).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p = pattern.as_bytes();
    let n = name.as_bytes();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn last_matching_rule_decides() {
        let t = Trainable::all().freeze("lm.*").train("lm.*lora_*");
        assert!(!t.is_trainable("lm.encoder.block.0.layer.0.SelfAttention.q.weight"));
        assert!(t.is_trainable("lm.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"));
        assert!(t.is_trainable("point_head.layers.0.weight"));
    }

    #[test]
    fn glob_matches_like_a_shell() {
        assert!(glob_match("a*c", "abbbc"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*c", "abbb"));
        assert!(glob_match(
            "image_encoder.sam.*",
            "image_encoder.sam.neck.0.weight"
        ));
        assert!(!glob_match(
            "image_encoder.sam.*",
            "image_encoder.eva.blocks.0"
        ));
    }

    #[test]
    fn repeated_blocks_are_the_listing_of_the_deeper_module() {
        let info = |name: &str, n: usize| ParamInfo::new(name, vec![n]);
        // Built: block 0 of one kind (a), block 1 of another (b, with an extra table).
        let built = vec![
            info("embed", 1),
            info("blocks.0.a", 2),
            info("blocks.1.a", 2),
            info("blocks.1.b", 3),
            info("norm", 4),
        ];
        let deeper = repeat_blocks(built, "blocks", 4, |i| usize::from(i % 2 == 1));
        let expected = vec![
            info("embed", 1),
            info("blocks.0.a", 2),
            info("blocks.1.a", 2),
            info("blocks.1.b", 3),
            info("blocks.2.a", 2),
            info("blocks.3.a", 2),
            info("blocks.3.b", 3),
            info("norm", 4),
        ];
        assert_eq!(deeper, expected);
        // A list without such blocks is left alone.
        let plain = vec![info("blocksx.0.a", 1)];
        assert_eq!(repeat_blocks(plain.clone(), "blocks", 3, |_| 0), plain);
    }

    proptest! {
        #[test]
        fn a_name_matches_itself_and_star(name in "[a-z_.0-9]{0,20}") {
            prop_assert!(glob_match(&name, &name));
            prop_assert!(glob_match("*", &name));
        }
    }
}
