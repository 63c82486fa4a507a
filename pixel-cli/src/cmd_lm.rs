//! `pixel lm forward|generate` and `pixel tokenize`: T5 / Flan-T5 on tensors in, tensors out
//! (safetensors), for parity checks against HF transformers and for scripts.
use pixel_core::checkpoint::TensorStore;
use pixel_core::DefaultDevice;
use pixel_lm::{AnyT5, Dtype, GenerateOptions, HostT5, T5Tokenizer};
use std::error::Error;
use std::path::PathBuf;

/// Run a T5 / Flan-T5 checkpoint (HF folder: config.json + model.safetensors or shards).
#[derive(Debug, clap::Subcommand)]
pub enum LmCommand {
    /// Encoder hidden states and logits with teacher forcing, as HF's `model(...)`.
    #[command(
        after_help = "Example:\n  pixel lm forward --model flan-t5-small --inputs in.safetensors --out out.safetensors\n  pixel lm forward --model flan-t5-small --dtype bf16 --inputs in.safetensors --out out.safetensors\n\n\
        IN (i64): input_ids [B,S], attention_mask [B,S] (optional, 1 = real), decoder_input_ids [B,T]\n\
        OUT (f32): encoder_last_hidden_state [B,S,D], decoder_hidden [B,T,D], logits [B,T,V]"
    )]
    Forward {
        /// HF model folder.
        #[arg(long)]
        model: PathBuf,
        /// How to store the weights: f32 (the trainable dfdx model), bf16 or f16 (16-bit
        /// weights, f32 arithmetic; a checkpoint in that dtype loads without widening).
        #[arg(long, default_value = "f32")]
        dtype: Dtype,
        /// Inputs, a safetensors file.
        #[arg(long)]
        inputs: PathBuf,
        /// Where to write the outputs (safetensors).
        #[arg(long)]
        out: PathBuf,
    },
    /// Greedy or beam search, as HF's `generate(do_sample=False)`.
    #[command(
        after_help = "Example:\n  pixel lm generate --model flan-t5-small --inputs in.safetensors --max-new-tokens 20 --num-beams 4 --out out.safetensors\n  pixel lm generate --model flan-t5-small --dtype bf16 --inputs in.safetensors --out out.safetensors\n\n\
        IN (i64): input_ids [B,S], attention_mask [B,S] (optional)\n\
        OUT: sequences (i64) [B,L], starting with the decoder start token; decoder_hidden (f32) [B,L-1,D]"
    )]
    Generate {
        #[arg(long)]
        model: PathBuf,
        /// How to store the weights: f32, bf16 or f16 (as for `forward`).
        #[arg(long, default_value = "f32")]
        dtype: Dtype,
        #[arg(long)]
        inputs: PathBuf,
        /// New tokens after the decoder start token.
        #[arg(long, default_value_t = 20)]
        max_new_tokens: usize,
        /// 1 = greedy search.
        #[arg(long, default_value_t = 1)]
        num_beams: usize,
        /// Beam search length penalty (HF's `length_penalty`).
        #[arg(long, default_value_t = 1.0)]
        length_penalty: f32,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Print the T5 token ids of each TEXT as JSON (EOS appended).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  pixel tokenize \"a man holding a red umbrella\"\n  -> [[3,9,388,3609,3,9,1131,18598,1]]"
)]
pub struct TokenizeArgs {
    /// A HF tokenizer.json.
    #[arg(long, default_value = "assets/t5-tokenizer.json")]
    pub tokenizer: PathBuf,
    /// Texts to encode.
    #[arg(required = true)]
    pub text: Vec<String>,
}

pub fn run(cmd: LmCommand) -> Result<(), Box<dyn Error>> {
    match cmd {
        LmCommand::Forward {
            model,
            dtype,
            inputs,
            out,
        } => {
            let inputs = TensorStore::read(&inputs)?;
            let outputs = if dtype == Dtype::F32 {
                let dev = DefaultDevice::default();
                AnyT5::from_pretrained(&model, &dev)?.forward_tensors(&inputs)?
            } else {
                HostT5::from_pretrained(&model, dtype)?.forward_tensors(&inputs)?
            };
            outputs.write(&out)?;
        }
        LmCommand::Generate {
            model,
            dtype,
            inputs,
            max_new_tokens,
            num_beams,
            length_penalty,
            out,
        } => {
            let options = GenerateOptions {
                max_new_tokens,
                num_beams: num_beams.max(1),
                length_penalty,
            };
            let inputs = TensorStore::read(&inputs)?;
            let outputs = if dtype == Dtype::F32 {
                let dev = DefaultDevice::default();
                AnyT5::from_pretrained(&model, &dev)?.generate_tensors(&inputs, &options)?
            } else {
                HostT5::from_pretrained(&model, dtype)?.generate_tensors(&inputs, &options)?
            };
            outputs.write(&out)?;
        }
    }
    Ok(())
}

pub fn tokenize(args: TokenizeArgs) -> Result<(), Box<dyn Error>> {
    let tokenizer = T5Tokenizer::from_file(&args.tokenizer)?;
    let ids = args
        .text
        .iter()
        .map(|t| tokenizer.encode(t))
        .collect::<Result<Vec<_>, _>>()?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
