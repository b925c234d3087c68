/* Which kernel family this compilation of asrq_kernels.c / asrq_ops.c is (asrq_kernels.c's module
 * comment): the Makefile compiles both once per family, with -DASRQ_FAMILY_<name> and its -m flags. */
#ifndef ASRQ_FAMILY_H
#define ASRQ_FAMILY_H

#if defined(ASRQ_FAMILY_avx512)
#if !(defined(__AVX512VNNI__) && defined(__AVX512BW__))
#error "the avx512 family needs -mavx512f -mavx512bw -mavx512vnni"
#endif
#define ASRQ_AVX512 1
#define FAMILY_NAME "avx512-vnni"
#define FAMILY_TABLE asrq_family_avx512
#define OPS_TABLE asrq_ops_avx512
#include <immintrin.h>
#elif defined(ASRQ_FAMILY_avxvnni)
#if !defined(__AVXVNNI__)
#error "the avxvnni family needs -mavx2 -mavxvnni"
#endif
#define ASRQ_AVXVNNI 1
#define FAMILY_NAME "avx-vnni"
#define FAMILY_TABLE asrq_family_avxvnni
#define OPS_TABLE asrq_ops_avxvnni
#include <immintrin.h>
#elif defined(ASRQ_FAMILY_avx2)
#if !defined(__AVX2__)
#error "the avx2 family needs -mavx2"
#endif
#define ASRQ_AVX2 1
#define FAMILY_NAME "avx2"
#define FAMILY_TABLE asrq_family_avx2
#define OPS_TABLE asrq_ops_avx2
#include <immintrin.h>
#else
#define ASRQ_PORTABLE 1
#define FAMILY_NAME "portable"
#define FAMILY_TABLE asrq_family_portable
#define OPS_TABLE asrq_ops_portable
#endif

#endif
