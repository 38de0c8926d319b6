#!/bin/sh
# Start-up of the Docker image (Hugging Face Space or any host):
#  1. caches (the Hugging Face hub's) on persistent storage when /data is writable;
#  2. `python -m arith space-init`: download and verify $ARITH_BUNDLE from $ARITH_BUNDLE_REPO if it is not there yet
#     (never fatal: problems are printed and the app still starts);
#  3. serve the app on 0.0.0.0:$PORT (7860, the Space's app_port).
set -u
if [ -z "${HF_HOME:-}" ]; then
  if [ -d /data ] && [ -w /data ]; then
    export HF_HOME=/data/.huggingface
  else
    export HF_HOME="${HOME:-/tmp}/.cache/huggingface"
  fi
fi
python -m arith space-init || echo "start.sh: space-init failed; starting anyway" >&2
if [ -n "${ARITH_BUNDLE:-}" ] && [ ! -f "${ARITH_BUNDLE}/manifest.json" ]; then
  echo "start.sh: no bundle at ${ARITH_BUNDLE}; the app opens the bundles under precomputed/" >&2
  unset ARITH_BUNDLE
fi
# Uploads from the Space page (an iframe on huggingface.co) need XSRF protection off: the browser does not send the
# Streamlit XSRF cookie from inside the iframe, and uploads then fail with "403". ARITH_XSRF=true turns it back on
# when the app is served directly.
exec streamlit run app.py --server.port "${PORT:-7860}" --server.address 0.0.0.0 \
  --server.enableXsrfProtection "${ARITH_XSRF:-false}"
