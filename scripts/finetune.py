"""Uptrain or fine-tune a model in MHA, GQA or MQA attention (converted on load) with transformers' Trainer.

    # SmolLM2 GQA-3 -> MQA by the default recipe (auto: calibrated on the training text), uptrained on all
    # weights with the LM loss (CPU)
    python scripts/finetune.py --attn_variant mqa --output_dir out/smollm2-mqa-uptrained \\
        --max_steps 200 --per_device_train_batch_size 4 --block_size 256 --learning_rate 1e-4 --use_cpu

    # mean pooling (the GQA paper's start), distilled from the unconverted model, training only the K/V projections
    python scripts/finetune.py --attn_variant mqa --kv-init mean --distill --distill_alpha 0.5 --train_modules kv \\
        --output_dir out/smollm2-mqa-distilled --max_steps 200 --learning_rate 1e-3 --use_cpu

    # a token budget instead of steps: 5% of a stated pre-training size (the GQA paper's recipe)
    python scripts/finetune.py SRC-ARGS --uptrain_fraction 0.05 --pretrain_tokens 2e9 ...

    # LoRA (PEFT) on a GQA-4 conversion of a local checkpoint, local text files
    python scripts/finetune.py --model_name_or_path path/to/model --attn_variant gqa --num_key_value_heads 4 \\
        --use_peft --lora_r 16 --lora_alpha 32 --data_files my.txt --output_dir out/lora

    # multi-GPU (DDP), FSDP, or two CPU processes, with the shipped accelerate configs
    accelerate launch --config_file hf_attn_variants/accelerate_configs/multi_gpu.yaml scripts/finetune.py ...
    accelerate launch --config_file hf_attn_variants/accelerate_configs/fsdp.yaml scripts/finetune.py ...
    accelerate launch --config_file hf_attn_variants/accelerate_configs/cpu_2proc.yaml scripts/finetune.py ...

    # an interrupted run continues from its last checkpoint in output_dir
    python scripts/finetune.py ... --resume_from_checkpoint last

Every option: ``python scripts/finetune.py --help``. ``hf-attn-variants train ...`` runs the same code.
"""

from hf_attn_variants.training import main

if __name__ == "__main__":
    main()
