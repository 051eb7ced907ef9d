#!/usr/bin/env bash
# test_recipes.sh — the published command lines as a user runs them: the
# reference's ViT-S/16 and ViT-B/16 command lines, with `sere recipe` in
# place of `python main_sere.py`, start, log and checkpoint on CPU on a
# small folder of real photos (only `--stop_after_iters 1` and a batch of 2
# are added, to keep it short); --help lists every flag with its default;
# an unknown flag is an error with a suggestion; the ablations accept the
# same flags.
#   usage: tests/cli/test_recipes.sh path/to/sere   (from the repository root)
set -u
SERE=$(realpath "${1:?usage: test_recipes.sh path/to/sere}")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failed=0
fail() { echo "FAIL $1" >&2; failed=$((failed + 1)); }

# a two-class ImageFolder of the test photos
mkdir -p "$TMP/data/jpeg" "$TMP/data/png"
cp tests/data/images/*.jpg "$TMP/data/jpeg/"
cp tests/data/images/*.png "$TMP/data/png/"
SHORT="--batch_size_per_gpu 2 --stop_after_iters 1 --print_freq 1 --num_workers 2 --data_path $TMP/data"

# seed_run NAME RECIPE FLAGS...: runs one command line, checks its log and checkpoint
seed_run() {
  local name=$1 recipe=$2
  shift 2
  local out="$TMP/$name"
  if ! "$SERE" "$recipe" "$@" $SHORT --output_dir "$out" >"$TMP/$name.log" 2>&1; then
    fail "$name: exit status $?"; cat "$TMP/$name.log" >&2; return
  fi
  grep -Eq '^\[1/[0-9]+\] epoch 1/100  eta [0-9:]+  [0-9.]+ img/s  cls [0-9.]+  patch [0-9.]+  pixel [0-9.]+  channel [0-9.]+  total [0-9.]+  acc [0-9.]+  lr 0  wd 0.04$' "$TMP/$name.log" \
    || { fail "$name: no progress line"; cat "$TMP/$name.log" >&2; }
  grep -q '"step": 1' "$out/log.txt" || fail "$name: no JSON record in log.txt"
  [[ -s "$out/checkpoint.safetensors" ]] || fail "$name: no checkpoint"
  rm -rf "$out"
}

seed_run vit_small recipes/vit_small.lua --arch vit_small --teacher_temp 0.07 --warmup_teacher_temp_epochs 30 \
  --norm_last_layer false --shared_head true --clip_grad 0.3 --global_crops_scale 0.40 1 \
  --local_crops_number 10 --local_crops_scale 0.05 0.40 --pred_ratio 0 0.3 --pred_ratio_var 0 0.2 \
  --alpha 0.2 --beta 0.5 --epochs 100 --saveckp_freq 10
seed_run vit_base recipes/vit_base.lua --arch vit_base --out_dim 8192 --patch_out_dim 8192 --norm_last_layer true \
  --shared_head true --teacher_temp 0.07 --warmup_teacher_temp 0.04 --warmup_teacher_patch_temp 0.04 \
  --teacher_patch_temp 0.07 --warmup_teacher_temp_epochs 50 --pred_ratio 0 0.3 --pred_ratio_var 0 0.2 \
  --pred_shape block --use_fp16 true --clip_grad 0.3 --freeze_last_layer 3 --lr 0.00075 --min_lr 2e-6 \
  --warmup_epochs 10 --global_crops_scale 0.32 1 --local_crops_number 10 --local_crops_scale 0.05 0.32 \
  --alpha 0.2 --beta 0.5 --epochs 100 --saveckp_freq 10

# --help: every flag with its default, exit 0
help=$("$SERE" recipes/vit_small.lua --help) || fail "--help exit status"
for flag in arch patch_size out_dim patch_out_dim shared_head shared_head_teacher norm_last_layer momentum_teacher \
    norm_in_head act_in_head use_masked_im_modeling pred_ratio pred_ratio_var pred_shape pred_start_epoch lambda1 \
    lambda2 warmup_teacher_temp teacher_temp warmup_teacher_patch_temp teacher_patch_temp warmup_teacher_temp_epochs \
    use_fp16 weight_decay weight_decay_end clip_grad batch_size_per_gpu epochs freeze_last_layer lr warmup_epochs \
    min_lr optimizer load_from drop_path accum_iter global_crops_number global_crops_scale local_crops_number \
    local_crops_scale overlap_size alpha beta temperature_pixel temperature_channel data_path output_dir \
    saveckp_freq seed num_workers dist_url local_rank; do
  grep -Eq -- "^  --$flag +.*\[.*\]$" <<<"$help" || fail "--help lacks --$flag with a default"
done
grep -Eq -- '--teacher_temp +X .*\[0.07\]$' <<<"$help" || fail "--help: ViT-S teacher_temp default"
grep -Eq -- '--clip_grad +X .*\[0.3\]$' <<<"$(${SERE} recipes/vit_base.lua --help)" || fail "--help: ViT-B clip_grad"

# bad command lines: exit 2, one line naming the problem
err=$("$SERE" recipes/vit_small.lua --teacher_tmp 0.1 2>&1 >/dev/null); rc=$?
[[ $rc == 2 && $err == *"unknown flag '--teacher_tmp'; did you mean --teacher_temp?"* ]] || fail "unknown flag: rc=$rc $err"
err=$("$SERE" recipes/vit_small.lua --norm_last_layer maybe 2>&1 >/dev/null); rc=$?
[[ $rc == 2 && $err == *"--norm_last_layer wants true or false, got 'maybe'"* ]] || fail "bad boolean: rc=$rc $err"
err=$("$SERE" recipes/vit_small.lua --arch vit_huge 2>&1 >/dev/null); rc=$?
[[ $rc == 2 && $err == *"--arch must be one of"* ]] || fail "bad choice: rc=$rc $err"
err=$("$SERE" recipes/ablations/no_pixel.lua --alpah 0 2>&1 >/dev/null); rc=$?
[[ $rc == 2 && $err == *"did you mean --alpha?"* ]] || fail "ablation flags: rc=$rc $err"

if ((failed)); then echo "$failed failed" >&2; exit 1; fi
echo "test_recipes: all passed"
