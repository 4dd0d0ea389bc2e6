#!/usr/bin/env bash
# The whole check, as README.md describes it: reference side in $REF_VENV, elite side in $ELITE_VENV.
#   bash benchmarks/reference_check/run.sh CHECKOUT OUT [MODELS]
# CHECKOUT: the elite checkout to check (e.g. /work/main); OUT: results folder;
# MODELS: a folder made by make_models.py (default /work/refcheck-tiny-cheap, made if missing).
# Set ARRAYS_ONLY=1 to skip generation (words and local tokens only: about a minute).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
checkout="$1"; out="$2"; models="${3:-/work/refcheck-tiny-cheap}"
REF_VENV="${REF_VENV:-/work/venv-ref}"; ELITE_VENV="${ELITE_VENV:-/work/venv-refcheck}"
REF_CODE="${REF_CODE:-/work/elite-ref}"; INPUT="${INPUT:-/work/refcheck-input}"
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
[[ -f "$models/mappers-h1024/local_mapper.pt" ]] || "$REF_VENV/bin/python" "$here/reference_side.py" mappers \
  --ref-code "$REF_CODE" --models "$models/reference-stack" --out "$models/mappers-h1024"

mkdir -p "$out"
# The reference's figures do not depend on the elite checkout: reuse them when present.
if [[ ! -f "$out/reference/words.npy" || ( -z "${arrays_only[*]}" && ! -f "$out/reference/image_lambda0.8.png" ) ]]; then
  "$REF_VENV/bin/python" "$here/reference_side.py" run --ref-code "$REF_CODE" --models "$models/reference-stack" \
    --mappers "$models/mappers-h1024" --input "$INPUT" --out "$out/reference" "${arrays_only[@]}" &
fi
name="elite-$(basename "$checkout")"
"$ELITE_VENV/bin/python" "$here/elite_side.py" --checkout "$checkout" --models "$models" \
  --mappers "$models/mappers-h1024" --input "$INPUT" --out "$out/$name" "${arrays_only[@]}"
wait
"$ELITE_VENV/bin/python" "$here/compare.py" "$out/reference" "$out/$name" --json "$out/$name.json"
