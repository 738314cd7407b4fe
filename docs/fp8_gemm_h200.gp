# FP8 GEMMs on nvidia-h200 (2026-12-06, fp8_gemm_bench, tree d1d13d4): TFLOP/s against tokens.
set terminal pngcairo size 900,540
set output 'docs/fp8_gemm_h200.png'
set title "FP8 GEMMs at DeepSeek-V3 shapes, H200 (cuBLASLt dense FP8 peak 1645 TFLOP/s)"
set logscale xy
set xlabel "tokens"
set ylabel "TFLOP/s"
set key left top
d = 'docs/data/fp8_h200_2026-12-06/'
plot d.'o_proj_dense_fp8.dat' w lp t 'o\_proj 7168x16384: grouped kernel (dense tiles)', \
     d.'o_proj_cublaslt_block.dat' w lp t 'o\_proj: cuBLASLt block-scaled (VEC128 x BLK128)', \
     d.'o_proj_cublaslt_tensor.dat' w lp t 'o\_proj: cuBLASLt per-tensor scale', \
     d.'experts_gate_up_grouped.dat' w lp t 'routed experts gate\_up 256x4096x7168: grouped kernel'
