/* The Mamba-2 decode step alone, one layer of the corpus model's shape (20 heads of 64, d_state
 * 128, 1 group), one thread: ym_ssd_step_f32 (dense) against ym_ssd_step_sparse_f32 with every
 * head keeping k = 128 / 64 / 32 / 13 entries (slots padded to 16), 20,000 steps each, twice.
 *   cc -O2 -I. tools/train/results/mamba2/engine/ssd_step_bench.c \
 *       build-test/engine/libym_engine.a -lopenblas -lm -o /tmp/ssd_step_bench
 * Prints microseconds per layer-step and dense / sparse. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "engine/ssd.h"
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
int main(void){
  const int H=20,P=64,N=128,G=1; ym_ssd_dims d={H,P,G,N};
  float *s=aligned_alloc(64,sizeof(float)*H*P*N), *y=malloc(4*H*P), *x=malloc(4*H*P), dt[20],A[20],D[20],B[128],C[128], work[256];
  for(int i=0;i<H*P*N;i++)s[i]=0; for(int i=0;i<H*P;i++)x[i]=0.01f*(i%7);
  for(int h=0;h<H;h++){dt[h]=0.01f;A[h]=-1;D[h]=1;} for(int n=0;n<N;n++){B[n]=0.1f;C[n]=0.2f;}
  int ks[4]={128,64,32,13};
  for(int rep=0;rep<2;rep++){
  double t0=now(); for(int it=0;it<20000;it++) ym_ssd_step_f32(y,s,x,dt,A,D,B,C,&d,0,H); double td=now()-t0;
  printf("dense %.2f us/layer\n",td/20000*1e6);
  for(int q=0;q<4;q++){int k=ks[q];
    int kp=(k+15)/16*16; int32_t head[20],group[20],gofs[2]={0,20},i0[21],*idx=malloc(4*20*kp);
    for(int h=0;h<H;h++){head[h]=h;group[h]=0;i0[h]=h*kp;for(int j=0;j<kp;j++)idx[h*kp+j]=j<k?j*(N/k>0?N/k:1)%N:-1;} i0[H]=H*kp;
    ym_ssd_plan pl={H,head,group,gofs,1280,i0,idx,(int64_t)H*kp*P};
    t0=now(); for(int it=0;it<20000;it++) ym_ssd_step_sparse_f32(y,s,x,dt,A,D,B,C,&d,&pl,0,H,work); double ts=now()-t0;
    printf("sparse k=%d %.2f us/layer (%.2fx)\n",k,ts/20000*1e6,td/ts); free(idx);}
  }
  return 0;}
