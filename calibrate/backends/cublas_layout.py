"""cuBLAS constants and the row-major -> column-major GEMM mapping (no CuPy import, testable)."""

from __future__ import annotations

# cuBLAS / CUDA enum values (stable C ABI).
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUDA_R_32F, CUDA_R_16F, CUDA_R_8I, CUDA_R_32I, CUDA_R_16BF = 0, 2, 3, 10, 14
CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_COMPUTE_32I = 68, 77, 72
CUBLAS_GEMM_DEFAULT = -1


def gemm_ex_layout(m: int, n: int, k: int) -> dict[str, int]:
    """Arguments of a column-major cuBLAS call computing row-major C[m,n] = A[m,k] @ W[n,k]^T.

    cuBLAS sees the row-major C as the column-major C^T (n x m) = op(W') . A' where W' is the
    weight buffer read as a k x n column-major matrix (so op = T gives W, n x k) and A' is the
    activation buffer read as a k x m column-major matrix (= A^T). First operand: W, second: A.
    This is the "TN" layout that every cuBLAS precision, int8 included, supports.
    """
    return {
        "transa": CUBLAS_OP_T,
        "transb": CUBLAS_OP_N,
        "m": n,
        "n": m,
        "k": k,
        "lda": k,
        "ldb": k,
        "ldc": n,
    }
