# The simulator's signal is learnable and the modalities add up: Cox models (stratified by cohort) on
# simple features, fitted on a random half and scored (Harrell's C) on the other half.
# Usage: Rscript learnability.R cohort.csv  (exit 1 when a claim fails)
suppressMessages(library(survival))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
set.seed(1)
n <- nrow(d); tr <- sample(n, n %/% 2); te <- setdiff(seq_len(n), tr)
imp <- function(x) { x[is.na(x)] <- mean(x[tr], na.rm = TRUE); x }   # training-half mean
genes <- grep("^g[0-9]+$", names(d))
X <- sapply(d[, genes], imp)
pc <- prcomp(X[tr, ], scale. = TRUE)
P <- predict(pc, X)[, 1:10]; colnames(P) <- paste0("pc", 1:10)
df <- data.frame(time = d$time, event = d$event, cohort = d$cohort,
                 age = imp(d$c0), stage = imp(d$c1), sex = imp(d$c2),
                 frac = imp(d$nuc_frac), rb = imp(d$nuc_rb), dark = imp(d$nuc_dark), P)
cidx <- function(rhs) {
  m <- coxph(as.formula(paste("Surv(time, event) ~", rhs, "+ strata(cohort)")), data = df[tr, ])
  lp <- predict(m, newdata = df[te, ], type = "lp")
  concordance(Surv(time, event) ~ lp, data = cbind(df[te, ], lp = lp), reverse = TRUE)$concordance
}
pcs <- paste(colnames(P), collapse = "+")
r <- c(clinical = cidx("age + stage + sex"), omics_pcs = cidx(pcs), image = cidx("frac + rb + dark"),
       all = cidx(paste("age + stage + sex + frac + rb + dark +", pcs)),
       oracle = concordance(Surv(time, event) ~ lh, data = d[te, ], reverse = TRUE)$concordance)
print(round(r, 4))
single <- r[c("clinical", "omics_pcs", "image")]
ok <- all(single > 0.55) && r["all"] > max(single) + 0.03 && r["all"] < r["oracle"]
if (!ok) { cat("learnability claims failed\n"); quit(status = 1) }
cat("learnability: ok\n")
