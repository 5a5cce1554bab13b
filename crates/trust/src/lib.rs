//! Trust: the mesh CA hierarchy and workload certificates (see issue 3).
