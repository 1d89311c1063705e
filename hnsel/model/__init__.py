"""The retrieval model: ``encoder`` (OpenCLIP and plugged-in towers; checkpoints), ``towers``, ``heads``, ``losses``,
``train`` (head and full training loops), ``features`` (cached backbone features), ``images`` (the image-loading
dataset), ``metrics`` (recall@K). Everything here imports torch; nothing here touches Milvus.
"""
