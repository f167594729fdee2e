"""The write side: the pipeline's stages that turn GitLab responses into rows (mirror, documents,
embeddings, work-item status).
"""
