mkdir -p .bundle .bundle_b && tar xzf .bundle.tar.gz -C .bundle && tar xzf out/bundle_b.tar.gz -C .bundle_b
export NCCL_NVLS_ENABLE=0
for b in .bundle .bundle_b; do
  LD_LIBRARY_PATH=$b/lib timeout 100 $b/bin/cuda_ops_test --gtest_filter='*Fp8*:*Tiny*' > $OUT/fp8_tests$b.log 2>&1
  echo "$b tests: $(grep -E '^\[  (PASSED|FAILED)' $OUT/fp8_tests$b.log | paste -sd ' ')"
  LD_LIBRARY_PATH=$b/lib timeout 90 $b/bin/fp8_gemm_bench --tokens=256,4096,16384 --csv=$OUT/gemm$b.csv > $OUT/gemm$b.log 2>&1
  grep -E "^(dense_fp8|grouped_fp8) " $OUT/gemm$b.log | grep -E "tokens +(4096|16384)" | cut -c1-120
done
grep -E "from the float32|Failure|of 6" $OUT/fp8_tests.bundle.log | head -20
deploy/gpu_scale_bench.sh 1 dp 1,16,64,256 2>&1 | tail -25
