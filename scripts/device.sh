#!/usr/bin/env bash
# Train an issue's minis on a lent GPU machine (the `device` tool) within its limits, and bring them back.
#
# The lent machine's limits (/work/.library/device/README.md): 15 min of device time per task, all tries and
# the machine's start included; <= 10 min per command; the working tree that travels (tracked files +
# carried paths) <= 64 MiB -- the bundled weights alone are ~88 MB; <= 8 files of < 16 MiB come back from
# $OUT; no ../shared and no network there; its python3 has torch/accelerate/peft/safetensors/einops but
# not diffusers.  So one call of a few minutes' training -- of one issue, or of two side by side on the one GPU
# (ISSUE = resshift,sd: the chains are strings of small kernels that leave most of an H200 idle; their
# handoffs fit $OUT together, 8 files / 56 MiB, with resshift's decoder adaptation left out -- alone, resshift
# hands back 7 files / ~40 MiB):
#
#   scripts/device.sh prep ISSUE          here: a training pack sized to fit, the wheels in .whl/, the LPIPS
#                                         weights in packs/, and a temporary branch `device-tmp` without the
#                                         bundled weights the run does not read; prints the `run` call
#   scripts/device.sh train ISSUE         there (the command prep prints): a preflight (every recipe at smoke
#                                         size, 2 steps on the GPU: a device-only fault ends the call in
#                                         seconds), the issue's training stages with GPU budgets that end
#                                         inside the call, then their handoff into $OUT
#                                         (sr_core/training/handoff.py: only what training changed, sharded)
#   scripts/device.sh collect ISSUE DIR   here: back to your branch, `adopt` the shards in DIR (the call's
#                                         files_at) into runs/, then export (+ resshift: stage pix) + eval
#                                         (+ bench) on the CPU with the issue's script, as its STAGES=export,...
#                                         documents
#   scripts/device.sh restore             here: back to your branch, `device-tmp` deleted (after a failed run)
#
# ISSUE: resshift (#4: vqf4-mini -> resshift-mini -> sinsr-mini -> each one's decoder on its own latents,
#        scripts/train_resshift_minis.sh),
#        sd (#7: mini-sd-vae -> mini-sd -> osediff-mini, scripts/train_sd_minis.sh; a new mini-sd means
#        stablesr-mini must be retrained on it: the stablesr issue next), stablesr (#6: stablesr-mini and
#        its CFW on the bundled mini-sd, scripts/train_stablesr_mini.sh); or two of them, comma-separated, in
#        order of priority (if their handoffs do not fit $OUT together, the first one's alone comes back);
#        sd and stablesr not together (stablesr trains on the mini-sd that sd replaces).
# resshift and sd warm-start from the bundled resshift-mini / mini-sd (autoencoder + UNet) and osediff-mini
# (its generator's LoRA), stablesr from the bundled stablesr-mini (encoder + SFT, CFW fusion); the bundles
# travel, so the pack is smaller: the lent minutes build on the CPU-trained weights.  COLD=1 trains from scratch.
# SIN_WARM=1 (prep, resshift): sinsr-mini travels too and its student continues from it, not from the teacher
# (20 MB more: a pack of ~230 crops fewer).
# COMPILE=1: every stage trains through torch.compile (unmeasured on a GPU: first try it with
# `python -m sr_core.training profile RECIPE --device cuda --compile --random-sources`).
# Warm, resshift,sd together leaves no room for a pack (two bundles + wheels + LPIPS): prep says so; pair
# them with COLD=1 (as the first lent run did) or give each its own session.
# Knobs: GPU_MIN (training minutes per chain, default 7, resshift 6; split over its stages as below), TIMEOUT_S (the
# call's limit printed by prep, default 570), DEVICE (train: cuda;
# cpu for a dry run here), RUNS (default runs), ASSETS / EVAL_LIMIT and EXTRA_* (passed to the issue's
# script), CHAIN_THREADS (CPU threads per chain when two run; default nproc / 2), CHAIN_SLACK_S (a chain is
# stopped GPU_MIN + this many seconds in; default 120 -- a dry run on a busy CPU, whose stage start-ups and
# handoffs are slow, wants ~600), PY.
# A dry run of the whole path on this CPU (tiny budgets, no device; prep/restore are not needed):
#   export RUNS=/tmp/dry/runs ASSETS=/tmp/dry/weights EVAL_LIMIT=2
#   OUT=/tmp/dry/out DEVICE=cpu GPU_MIN=0.6 scripts/device.sh train resshift && COLLECT_STAGES=export \
#     scripts/device.sh collect resshift /tmp/dry/out
set -euo pipefail
cd "$(dirname "$0")/.."

cmd=${1:-}; issue=${2:-}
PY=${PY:-python}
# measured on the first lent H200 (2026-11-30): the machine started in ~30 s; a call of GPU_MIN = 6 took 495 s
# (wheels, preflight, 3 stage start-ups, handoff: ~110-135 s besides training) -> 7 min of training ends
# ~530 s in, inside 570, and leaves ~4.5 of the 15 device minutes for a short rescue call on the warm machine;
# resshift's chain has 5 stages (two decoder runs after the UNets): ~50 s more start-ups, so 6 min by default
GPU_MIN_GIVEN=${GPU_MIN:-}
TIMEOUT_S=${TIMEOUT_S:-570}
LIMIT_MIB=62   # what travels, with headroom under the 64 MiB limit
LPIPS=packs/alex_shift_tolerant.pth
ORIG_FILE=.git/device-orig-branch
RUNS=${RUNS:-runs}

# one issue's settings (conf ISSUE): its script, stages, runs, needs and stage shares of GPU_MIN
conf() {
  case "$1" in
    resshift) SCRIPT=scripts/train_resshift_minis.sh; TRAIN_STAGES=vq,rs,sin,adapt; RUNS_OF=(vqf4-mini resshift-mini sinsr-mini dec-resshift-mini dec-sinsr-mini)
              KEEP=(); WKEEP=(resshift-mini); WARM=(INIT_FROM=assets/weights/resshift-mini); NEED_LPIPS=0; NEED_WHEELS=0; SHARES=(0.2 0.4 0.2 0.2); BUDGETS=(BUDGET_VQ BUDGET_RS BUDGET_SIN BUDGET_ADAPT); MIN_DEFAULT=6
              [ "${SIN_WARM:-0}" = 1 ] && WKEEP+=(sinsr-mini)
              if [ "${#ISSUES[@]}" -gt 1 ]; then  # beside another chain its 7 handoff files leave no room in $OUT:
                # no decoder adaptation there (the export keeps the trained decoders; stage adapt can follow here)
                TRAIN_STAGES=vq,rs,sin; RUNS_OF=(vqf4-mini resshift-mini sinsr-mini); SHARES=(0.3 0.45 0.25)
                BUDGETS=(BUDGET_VQ BUDGET_RS BUDGET_SIN); MIN_DEFAULT=7
              fi
              COLLECT_DEFAULT=export,pix,eval,bench ;;
    sd)       SCRIPT=scripts/train_sd_minis.sh; TRAIN_STAGES=vae,sd,ose; RUNS_OF=(mini-sd-vae mini-sd osediff-mini)
              KEEP=(); WKEEP=(mini-sd osediff-mini); WARM=(INIT_FROM=assets/weights/mini-sd); NEED_LPIPS=1; NEED_WHEELS=1; SHARES=(0.35 0.25 0.40); BUDGETS=(BUDGET_VAE BUDGET_SD BUDGET_OSE); MIN_DEFAULT=7
              COLLECT_DEFAULT=export,eval,bench ;;
    stablesr) SCRIPT=scripts/train_stablesr_mini.sh; TRAIN_STAGES=sft,cfw; RUNS_OF=(stablesr-mini stablesr-cfw-mini)
              KEEP=(mini-sd); WKEEP=(stablesr-mini); WARM=(INIT_FROM=assets/weights/stablesr-mini); NEED_LPIPS=1; NEED_WHEELS=1; SHARES=(0.6 0.4); BUDGETS=(BUDGET_SFT BUDGET_CFW); MIN_DEFAULT=7
              COLLECT_DEFAULT=export,eval ;;
    *)        echo "unknown issue '$1' (resshift, sd, stablesr)" >&2; exit 2 ;;
  esac
  # KEEP: bundles a chain reads; WKEEP: bundles that travel only as its warm start (COLD=1: neither)
  if [ "${COLD:-0}" = 1 ]; then WARM=(); else KEEP+=("${WKEEP[@]}"); fi
}
IFS=, read -r -a ISSUES <<< "$issue"
if [ ${#ISSUES[@]} -eq 0 ]; then
  [ "$cmd" = restore ] || { sed -n '2,/^set -euo/{/^set -euo/!p}' "$0"; exit 2; }
fi
for i in "${ISSUES[@]}"; do conf "$i"; done
if [[ ",$issue," == *",sd,"* && ",$issue," == *",stablesr,"* ]]; then
  echo "sd and stablesr cannot share a call: stablesr trains on the bundled mini-sd, which sd replaces" >&2; exit 2
fi
# the union of the issues' needs (prep) and their runs in training order (handoff, collect)
ALL_KEEP=(); ALL_RUNS=(); ANY_LPIPS=0; ANY_WHEELS=0; GPU_MIN=7
for i in "${ISSUES[@]}"; do
  conf "$i"; ALL_KEEP+=("${KEEP[@]}"); ALL_RUNS+=("${RUNS_OF[@]}")
  [ "$NEED_LPIPS" = 1 ] && ANY_LPIPS=1; [ "$NEED_WHEELS" = 1 ] && ANY_WHEELS=1
  [ "$MIN_DEFAULT" -lt "$GPU_MIN" ] && GPU_MIN=$MIN_DEFAULT
done
GPU_MIN=${GPU_MIN_GIVEN:-$GPU_MIN}

mib() { "$PY" -c "import sys; print(f'{int(sys.argv[1]) / 2**20:.1f}')" "$1"; }
tree_bytes() { git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}'; }

restore() {
  [ -f "$ORIG_FILE" ] || { echo "(no device branch to leave)"; return 0; }
  local orig; orig=$(cat "$ORIG_FILE")
  git switch -q "$orig"
  git branch -q -D device-tmp 2>/dev/null || true
  rm -f "$ORIG_FILE"
  echo "== back on $orig (device-tmp deleted)"
}

case "$cmd" in
prep)
  if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    echo "commit or stash your changes first: prep switches to a temporary branch" >&2; exit 1
  fi
  [ -f "$ORIG_FILE" ] && { echo "a device branch is active ($(cat "$ORIG_FILE") -> device-tmp): restore first" >&2; exit 1; }
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  carry=()
  if [ "$ANY_WHEELS" = 1 ]; then
    mkdir -p .whl
    ls .whl/diffusers-0.42.1-*.whl >/dev/null 2>&1 && ls .whl/importlib_metadata-*.whl >/dev/null 2>&1 || \
      "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 \
        "importlib_metadata==$("$PY" -c 'import importlib.metadata as m; print(m.version("importlib_metadata"))')"
    carry+=(.whl)
  fi
  if [ "$ANY_LPIPS" = 1 ]; then
    if [ ! -f "$LPIPS" ]; then
      tmp=$(mktemp -d)
      "$PY" -m pip download -q --no-deps stlpips-pytorch==0.0.2 -d "$tmp"
      mkdir -p packs && unzip -q -j "$tmp"/*.whl '*/alex_shift_tolerant.pth' -d packs/
      rm -rf "$tmp"
    fi
    carry+=("$LPIPS")
  fi
  git rev-parse --abbrev-ref HEAD > "$ORIG_FILE"
  git switch -q -c device-tmp
  drop=()
  for d in assets/weights/*/; do
    d=${d%/}; keep=0
    for k in "${ALL_KEEP[@]}"; do [ "$d" = "assets/weights/$k" ] && keep=1; done
    [ "$keep" = 1 ] || drop+=("$d")
  done
  if [ ${#drop[@]} -gt 0 ]; then
    git rm -r -q "${drop[@]}"
    git commit -q -m "device run: without the bundled weights it does not read (temporary; never merge)"
  fi
  used=$(tree_bytes)
  for c in "${carry[@]}"; do used=$((used + $(du -sb "$c" | cut -f1))); done
  avail=$(( LIMIT_MIB * 1048576 - used ))
  # one 256-px crop (HR + LR, lossless WebP) is ~0.08 MiB in a pack; build, then shrink while it does not fit.
  # As many crops as fit, up to every training image's worth (~1000): the minis overfit a 320-crop pack -- resshift-mini
  # continued for ~2100 CPU steps on it: train loss -5 %, x0-MSE on BSD100 crops -0.6 %; on 1000 crops: -2.1 % --
  # and a GPU's minutes see each crop many times over
  n=$(( avail / 90000 )); [ "$n" -gt 1000 ] && n=1000
  [ "$n" -lt 60 ] && { restore; echo "only $(mib $avail) MiB left for the pack: too little" >&2; exit 1; }
  rm -f packs/device_x4_*.npz  # train reads the newest one
  while :; do
    PACK=packs/device_x4_s256_n$n.npz
    "$PY" -m sr_core.training pack --out "$PACK" --n-crops "$n" --max-mib 60 --codec webp >/dev/null
    [ "$(stat -c %s "$PACK")" -le "$avail" ] && break
    rm -f "$PACK"
    n=$(( n * 9 / 10 ))
    [ "$n" -ge 60 ] || { restore; echo "no pack of >= 60 crops fits the $(mib $avail) MiB left" >&2; exit 1; }
  done
  carry=("$PACK" "${carry[@]}")
  total=$(( used + $(stat -c %s "$PACK") ))
  echo "== ready on branch device-tmp: $(mib "$total") MiB travel (limit 64), pack of $n crops"
  echo "== the device call (the run tool):"
  carry_json=$(printf '"%s",' "${carry[@]}"); carry_json="[${carry_json%,}]"
  knobs="GPU_MIN=$GPU_MIN"
  for v in COLD BATCH_SCALE EXTRA_VQ EXTRA_RS EXTRA_SIN EXTRA_VAE EXTRA_SD EXTRA_OSE EXTRA_SFT EXTRA_CFW; do
    [ -n "${!v:-}" ] && knobs+=" $v='${!v}'"
  done
  echo "  command:   $knobs bash scripts/device.sh train $issue"
  echo "  carry:     $carry_json"
  echo "  timeout_s: $TIMEOUT_S"
  echo "== then: scripts/device.sh collect $issue <files_at>   (or scripts/device.sh restore if it failed)"
  ;;

train)
  OUT=${OUT:?train runs on the device machine, where \$OUT is set (or set OUT for a dry run)}
  DEVICE=${DEVICE:-cuda}
  PY=${PY_DEVICE:-$( [ "$DEVICE" = cuda ] && echo python3 || echo "$PY" )}
  if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  PACK=$(ls -t packs/device_x4_*.npz 2>/dev/null | head -1 || true)
  [ -n "$PACK" ] || PACK=packs/train_x4_s256_n320.npz
  [ -f "$PACK" ] || { echo "no training pack under packs/ (carry the one prep built)" >&2; exit 1; }
  [ -f "$LPIPS" ] && export SR_LPIPS_WEIGHTS=$PWD/$LPIPS
  export PYTHONUNBUFFERED=1
  [ "$DEVICE" = cuda ] && { nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true; }
  # seconds: every recipe of the chains at smoke size on the device, so a device-only fault ends the call
  # now, not minutes into a stage
  t0=$(date +%s)
  "$PY" -m sr_core.training preflight "${ISSUES[@]}" --pack "$PACK" --device "$DEVICE" || {
    echo "== preflight failed after $(( $(date +%s) - t0 )) s: nothing trained" >&2; exit 1; }
  # the issues' chains side by side (one GPU holds them all; each is a string of small kernels), each
  # stage ending at its share of GPU_MIN; a chain that hangs is stopped GPU_MIN + CHAIN_SLACK_S (120 s) in
  chain() {
    conf "$1"
    local env_budgets=() i
    for i in "${!BUDGETS[@]}"; do
      env_budgets+=("${BUDGETS[$i]}=$("$PY" -c "import sys; print(round(float(sys.argv[1]) * float(sys.argv[2]), 2))" "$GPU_MIN" "${SHARES[$i]}")")
    done
    echo "== $1 on $DEVICE: stages $TRAIN_STAGES, ${env_budgets[*]} (minutes), pack $PACK"
    env "${env_budgets[@]}" "${WARM[@]}" PY="$PY" DEVICE="$DEVICE" PACK="$PACK" RUNS="$RUNS" STAGES="$TRAIN_STAGES" \
      ${CHAIN_THREADS:+THREADS=$CHAIN_THREADS} timeout "$("$PY" -c "import sys; print(int(float(sys.argv[1]) * 60 + int(sys.argv[2])))" "$GPU_MIN" "${CHAIN_SLACK_S:-120}")" \
      bash "$SCRIPT" 2>&1 | sed -u "s/^/[$1] /"
  }
  [ ${#ISSUES[@]} -gt 1 ] && CHAIN_THREADS=${CHAIN_THREADS:-$(( $(nproc) / ${#ISSUES[@]} ))}
  pids=()
  for i in "${ISSUES[@]}"; do chain "$i" & pids+=($!); done
  rc=0
  for k in "${!pids[@]}"; do wait "${pids[$k]}" || { echo "== ${ISSUES[$k]}: its script ended with an error" >&2; rc=1; }; done
  done_runs=()
  for r in "${ALL_RUNS[@]}"; do [ -f "$RUNS/$r/ckpt/last.pt" ] && done_runs+=("$RUNS/$r"); done
  if [ ${#done_runs[@]} -gt 0 ]; then
    echo "== handoff into \$OUT: ${done_runs[*]}"
    if ! "$PY" -m sr_core.training handoff "${done_runs[@]}" --out "$OUT"; then
      # too much for $OUT together: the first issue's runs alone (the order given is the priority)
      rm -f "$OUT"/*.safetensors
      conf "${ISSUES[0]}"; first=()
      for r in "${RUNS_OF[@]}"; do [ -f "$RUNS/$r/ckpt/last.pt" ] && first+=("$RUNS/$r"); done
      echo "== handoff of ${ISSUES[0]} alone: ${first[*]}"
      [ ${#first[@]} -gt 0 ] && "$PY" -m sr_core.training handoff "${first[@]}" --out "$OUT"
      rc=1
    fi
  fi
  for r in "${done_runs[@]}"; do
    [ -f "$r/train_info.json" ] && "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1], d['steps'], 'steps,', round(d['wall_seconds']/60, 2), 'min,', d['device'])" "$r/train_info.json"
  done
  echo "== device call: $(( $(date +%s) - t0 )) s after the preflight began"
  exit $rc
  ;;

collect)
  dir=${3:?collect ISSUE DIR: the folder the shards came back to (files_at)}
  [ "$(git rev-parse --abbrev-ref HEAD)" = device-tmp ] && restore
  DEVICE=cpu
  "$PY" -m sr_core.training adopt "$dir" --runs "$RUNS"
  for i in "${ISSUES[@]}"; do
    conf "$i"
    [ "$i" = sd ] && echo "(a new mini-sd: stablesr-mini was trained on the old one -- retrain it: scripts/device.sh prep stablesr)"
    DEVICE=cpu RUNS="$RUNS" STAGES=${COLLECT_STAGES:-$COLLECT_DEFAULT} bash "$SCRIPT"
  done
  ;;

restore)
  restore
  ;;

*)
  sed -n '2,/^set -euo/{/^set -euo/!p}' "$0"; exit 2 ;;
esac
