#!/usr/bin/env bash
# The whole check, as README.md describes it: reference side in $REF_VENV, elite side in $ELITE_VENV.
#   bash benchmarks/reference_check/run.sh CHECKOUT OUT [MODELS]
# CHECKOUT: the elite checkout to check (e.g. /work/main); OUT: results folder;
# MODELS: a folder made by make_models.py (default /work/refcheck-tiny-cheap, made if missing).
# Set ARRAYS_ONLY=1 to skip generation (words and local tokens only: about a minute).
# LOCAL_KV_GAIN (default 30) scales the random local key/value weights (see README.md).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
checkout="$1"; out="$2"; models="${3:-/work/refcheck-tiny-cheap}"
REF_VENV="${REF_VENV:-/work/venv-ref}"; ELITE_VENV="${ELITE_VENV:-/work/venv-refcheck}"
REF_CODE="${REF_CODE:-/work/elite-ref}"; INPUT="${INPUT:-/work/refcheck-input}"
gain="${LOCAL_KV_GAIN:-30}"; mappers="$models/mappers-h1024-gain$gain"
arrays_only=(); [[ "${ARRAYS_ONLY:-0}" == 1 ]] && arrays_only=(--arrays-only)
# One thread each: the reference and elite sides may run side by side on a small shared machine.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"

[[ -f "$INPUT/refcat.png" ]] || "$ELITE_VENV/bin/python" "$here/make_input.py" "$INPUT"
if [[ ! -d "$models/stable-diffusion" ]]; then
  case "$models" in
    *cheap*) "$ELITE_VENV/bin/python" "$here/make_models.py" "$models" --cheap-unet ;;
    *) "$ELITE_VENV/bin/python" "$here/make_models.py" "$models" ;;
  esac
fi
[[ -d "$models/reference-stack" ]] || "$REF_VENV/bin/python" "$here/reference_side.py" convert --tiny "$models" --out "$models/reference-stack"
[[ -f "$mappers/local_mapper.pt" ]] || "$REF_VENV/bin/python" "$here/reference_side.py" mappers \
  --ref-code "$REF_CODE" --models "$models/reference-stack" --out "$mappers" --local-kv-gain "$gain"

mkdir -p "$out"
# The reference's figures do not depend on the elite checkout: reuse them when present.
reference_pid=""
if [[ ! -f "$out/reference/words.npy" || ( -z "${arrays_only[*]}" && ! -f "$out/reference/image_lambda0.8.png" ) ]]; then
  "$REF_VENV/bin/python" "$here/reference_side.py" run --ref-code "$REF_CODE" --models "$models/reference-stack" \
    --mappers "$mappers" --input "$INPUT" --out "$out/reference" --llambda 0.8 0 "${arrays_only[@]}" &
  reference_pid=$!
fi
name="elite-$(basename "$checkout")"
"$ELITE_VENV/bin/python" "$here/elite_side.py" --checkout "$checkout" --models "$models" \
  --mappers "$mappers" --input "$INPUT" --out "$out/$name" "${arrays_only[@]}"
[[ -z "$reference_pid" ]] || wait "$reference_pid"
"$ELITE_VENV/bin/python" "$here/compare.py" "$out/reference" "$out/$name" --json "$out/$name.json"
