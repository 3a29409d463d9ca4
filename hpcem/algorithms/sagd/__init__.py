"""Ab initio 3D reconstruction by stochastic average gradient descent with importance-sampled
quadrature over poses (seed 003; cryoSPARC's Ab-Initio Reconstruction)."""
