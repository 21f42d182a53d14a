"""Loss-landscape analysis of Random Masking: the linear-regression theory check, the Hessian probe,
distances travelled by trained adapters, and the a-priori learning-rate predictor.

Import the submodules directly (``theory`` needs only numpy; the others need torch and the trainer).
"""
