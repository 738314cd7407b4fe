# Absorbed MLA decode on one GPU: mlaserve (kernels/cuda/mla_decode_bench) against
# FlashMLA (kernels/cuda/flashmla_baseline/flashmla_bench), from their CSVs.
#
#   gnuplot -e "ours='docs/data/mla_decode_h100_2026-11-23/mla_decode.csv'; \
#               flash='docs/data/baselines_h100_2026-11-23/flashmla.csv'; \
#               variant=11; out='docs/mla_decode_h100.png'" kernels/cuda/mla_decode_plot.gp
#
# Top: 128 heads in TFLOP/s and 16 heads in latent TB/s against the batch, per context
# (solid: mlaserve, dashed: FlashMLA; grey: the cuBLAS GEMM and device-to-device copy
# of the same run, from the CSV's first line). Bottom: time per call against the
# context at batch 1 and 64. Stream-launched timings (us_per_call).
if (!exists("ours")) ours = 'docs/data/mla_decode_h100_2026-11-23/mla_decode.csv'
if (!exists("flash")) flash = 'docs/data/baselines_h100_2026-11-23/flashmla.csv'
if (!exists("variant")) variant = 11
if (!exists("out")) out = 'docs/mla_decode_h100.png'

set datafile separator ','
set datafile commentschars '#'
# Ceilings measured in the same run: "# device=... copy_tbps=X gemm_tflops=Y ...".
header = system(sprintf("head -1 '%s'", ours))
copy_tbps = real(system(sprintf("echo '%s' | sed -n 's/.*copy_tbps=\\([0-9.]*\\).*/\\1/p'", header)))
gemm_tflops = real(system(sprintf("echo '%s' | sed -n 's/.*gemm_tflops=\\([0-9.]*\\).*/\\1/p'", header)))

set terminal pngcairo size 1600,1100 font ',11'
set output out
set multiplot layout 2,2 title sprintf("Absorbed MLA decode, H100 (rank 512 + rope 64, block 64): mlaserve variant %d (solid) vs FlashMLA (dashed)", variant)

# Our CSV: 2 variant, 3 heads, 4 batch, 5 context, 10 us_per_call, 11 tbps, 12 tflops.
# FlashMLA's: 2 heads, 3 batch, 4 context, 9 us_per_call, 10 tbps, 11 tflops.
ctx1 = 1024; ctx2 = 8192; ctx3 = 65536
set logscale x 2
set xlabel 'batch (sequences, one query token each)'
set key top left
set grid

# Rows of our CSV (variant, heads, then batch or context) and of FlashMLA's, via awk.
ours_rows(h, col, val) = sprintf("< awk -F, '$2 == %d && $3 == %d && $%d == %d' '%s'", variant, h, col, val, ours)
flash_rows(h, col, val) = sprintf("< awk -F, '$1 == \"flashmla\" && $2 == %d && $%d == %d' '%s'", h, col, val, flash)

set title '128 heads'
set ylabel 'TFLOP/s (2 x heads x (576 + 512) per query-key)'
set yrange [0:*]
plot for [c in "1024 8192 65536"] ours_rows(128, 5, int(c)) using 4:12 \
       with linespoints lw 2 title sprintf('mlaserve %dK', int(c) / 1024), \
     for [c in "1024 8192 65536"] flash_rows(128, 4, int(c)) using 3:11 \
       with linespoints lw 2 dt 2 title sprintf('FlashMLA %dK', int(c) / 1024), \
     gemm_tflops with lines lc rgb 'grey' lw 2 title sprintf('cuBLAS bf16 GEMM %.0f', gemm_tflops)

set title '16 heads'
set ylabel 'TB/s of latent cache read'
plot for [c in "1024 8192 65536"] ours_rows(16, 5, int(c)) using 4:11 \
       with linespoints lw 2 title sprintf('mlaserve %dK', int(c) / 1024), \
     for [c in "1024 8192 65536"] flash_rows(16, 4, int(c)) using 3:10 \
       with linespoints lw 2 dt 2 title sprintf('FlashMLA %dK', int(c) / 1024), \
     copy_tbps with lines lc rgb 'grey' lw 2 title sprintf('device copy %.2f', copy_tbps)

set logscale y 10
set xlabel 'context (tokens)'
set ylabel 'µs per call'
set yrange [*:*]
set key top left
do for [h in "128 16"] {
  set title sprintf('%s heads: time per call', h)
  plot for [b in "1 64"] ours_rows(int(h), 4, int(b)) using 5:10 \
         with linespoints lw 2 title sprintf('mlaserve batch %s', b), \
       for [b in "1 64"] flash_rows(int(h), 3, int(b)) using 4:9 \
         with linespoints lw 2 dt 2 title sprintf('FlashMLA batch %s', b)
}
unset multiplot
