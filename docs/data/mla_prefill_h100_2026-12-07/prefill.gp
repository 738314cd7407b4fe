set terminal png size 900,450 noenhanced
set output 'prefill_tflops.png'
set multiplot layout 1,2 title 'MLA attention of an 8,192-token chunk, one layer, H100 (2026-12-07)'
set logscale x 2
set xlabel 'context (tokens)'
set ylabel 'TFLOP/s'
set yrange [0:850]
set key top left font ',8'
do for [h in "16 128"] {
  set title h.' heads'
  plot 'chunk8192.dat' using ($1==h+0 ? $2 : 1/0):8 with lines dt 2 lc rgb 'gray' title 'cuBLAS bf16 GEMM 8192^3', \
       '' using ($1==h+0 ? $2 : 1/0):3 with linespoints title 'absorbed kernel (its FLOPs)', \
       '' using ($1==h+0 ? $2 : 1/0):4 with linespoints title 'expanded, wgmma', \
       '' using ($1==h+0 ? $2 : 1/0):5 with points pt 7 title 'expanded, mma.sync (retired)', \
       '' using ($1==h+0 ? $2 : 1/0):6 with linespoints title 'absorbed path, expanded-form FLOPs', \
       '' using ($1==h+0 ? $2 : 1/0):7 with linespoints title 'expanded path incl. K/V expansion'
}
unset multiplot
