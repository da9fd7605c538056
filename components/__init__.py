"""searchtune's pipeline steps: plain, typed Python that runs without KFP or a cluster."""

import logging

# faiss's loader logs every SIMD build it could not import, at INFO: not news to a user.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
