# Reference values from R survival for pansurv's survival/ tests.
# Regenerate (writes the CSV data and r_fixtures.json next to this script):
#   Rscript tests/reference/make_fixtures.R tests/reference
# Needs r-base-core and r-cran-survival only (no other R package).
suppressMessages(library(survival))
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[1] else "."

# ---- a tiny JSON writer (numbers at 17 significant digits) ----------------
num <- function(v) ifelse(is.finite(v), sprintf("%.17g", v), "null")
tojson <- function(x) {
  if (is.list(x)) {
    if (is.null(names(x))) return(paste0("[", paste(sapply(x, tojson), collapse = ", "), "]"))
    return(paste0("{", paste(sprintf("\"%s\": %s", names(x), sapply(x, tojson)), collapse = ", "), "}"))
  }
  if (is.character(x)) return(if (length(x) == 1) sprintf("\"%s\"", x) else paste0("[", paste(sprintf("\"%s\"", x), collapse = ", "), "]"))
  if (is.logical(x)) return(if (x) "true" else "false")
  if (!is.null(names(x))) return(paste0("{", paste(sprintf("\"%s\": %s", names(x), num(x)), collapse = ", "), "}"))
  if (length(x) == 1) return(num(x))
  paste0("[", paste(num(x), collapse = ", "), "]")
}
wcsv <- function(df, name) write.csv(df, file.path(out, name), row.names = FALSE, quote = TRUE)

ctl <- coxph.control(eps = 1e-12, iter.max = 100, toler.chol = 1e-14)
fitinfo <- function(f) {
  # Full-precision tests from the fit object (summary() rounds).
  beta <- coef(f)
  list(coef = as.list(beta), se = as.list(sqrt(diag(vcov(f)))),
       loglik = f$loglik[2], loglik_null = f$loglik[1],
       concordance = unname(f$concordance["concordance"]),
       n = f$n, events = f$nevent,
       lr = 2 * (f$loglik[2] - f$loglik[1]),
       wald = as.numeric(t(beta) %*% solve(vcov(f)) %*% beta),
       score = unname(f$score))
}
fx <- list()

# ---- R's own textbook examples (tests/book1.R, book2.R) -------------------
test1 <- data.frame(time = c(9, 3, 1, 1, 6, 6, 8), status = c(1, NA, 1, 0, 1, 1, 0), x = c(0, 2, 1, 1, 1, 0, 0))
test1 <- na.omit(test1)
wcsv(test1, "book1.csv")
fx$book1_breslow <- fitinfo(coxph(Surv(time, status) ~ x, test1, ties = "breslow", control = ctl))
fx$book2_efron <- fitinfo(coxph(Surv(time, status) ~ x, test1, ties = "efron", control = ctl))

# ---- lung (ties, a covariate of size ~1e3) ----------------------------------
lung2 <- na.omit(data.frame(time = lung$time, status = lung$status - 1, age = lung$age, sex = lung$sex,
                            ph_ecog = lung$ph.ecog, meal_cal = lung$meal.cal))
wcsv(lung2, "lung.csv")
for (ties in c("efron", "breslow")) {
  fx[[paste0("lung_", ties)]] <- fitinfo(coxph(Surv(time, status) ~ age + sex + ph_ecog + meal_cal, lung2,
                                               ties = ties, control = ctl))
  fx[[paste0("lung_strata_", ties)]] <- fitinfo(coxph(Surv(time, status) ~ age + ph_ecog + strata(sex), lung2,
                                                      ties = ties, control = ctl))
}
# Standardized covariates (sd with n - 1), as --standardize.
lz <- lung2
for (v in c("age", "ph_ecog")) lz[[v]] <- (lz[[v]] - mean(lz[[v]])) / sd(lz[[v]])
fx$lung_standardized <- fitinfo(coxph(Surv(time, status) ~ age + ph_ecog, lz, control = ctl))

# ---- veteran (heavy ties, 4 cell types as strata) and ovarian ---------------
vet <- data.frame(time = veteran$time, status = veteran$status, karno = veteran$karno, age = veteran$age,
                  trt = veteran$trt, celltype = as.character(veteran$celltype))
wcsv(vet, "veteran.csv")
fx$veteran_efron <- fitinfo(coxph(Surv(time, status) ~ karno + age + trt, vet, control = ctl))
fx$veteran_breslow <- fitinfo(coxph(Surv(time, status) ~ karno + age + trt, vet, ties = "breslow", control = ctl))
fx$veteran_strata <- fitinfo(coxph(Surv(time, status) ~ karno + trt + strata(celltype), vet, control = ctl))
ova <- data.frame(futime = ovarian$futime, fustat = ovarian$fustat, age = ovarian$age, ecog = ovarian$ecog.ps,
                  rx = ovarian$rx)
wcsv(ova, "ovarian.csv")
fx$ovarian_efron <- fitinfo(coxph(Surv(futime, fustat) ~ age + ecog + rx, ova, control = ctl))

# ---- concordance, Uno, KM, log-rank ----------------------------------------
conc <- function(time, status, risk, timewt = "n", ymax = NULL) {
  f <- concordance(Surv(time, status) ~ risk, reverse = TRUE, timewt = timewt, ymax = ymax)
  list(c = f$concordance, var = f$var, count = as.list(f$count))
}
# A coarse risk score (many ties in risk) on lung and on veteran.
lung2$risk <- round(0.03 * lung2$age + 0.5 * lung2$ph_ecog - 0.4 * lung2$sex, 1)
vet$risk <- round(-0.03 * vet$karno + 0.01 * vet$age, 1)
wcsv(lung2, "lung.csv")
wcsv(vet, "veteran.csv")
fx$lung_conc <- conc(lung2$time, lung2$status, lung2$risk)
fx$lung_uno <- conc(lung2$time, lung2$status, lung2$risk, "n/G2")
fx$lung_uno_tau <- conc(lung2$time, lung2$status, lung2$risk, "n/G2", ymax = 500)
fx$vet_conc <- conc(vet$time, vet$status, vet$risk)
fx$vet_uno <- conc(vet$time, vet$status, vet$risk, "n/G2")
for (ct in sort(unique(vet$celltype))) {
  k <- vet$celltype == ct
  fx[[paste0("vet_conc_", ct)]] <- conc(vet$time[k], vet$status[k], vet$risk[k])
}
km <- function(time, status) {
  f <- survfit(Surv(time, status) ~ 1)
  tab <- summary(f)$table
  list(time = f$time, n_risk = f$n.risk, n_event = f$n.event, surv = f$surv, std_err = f$std.err,
       lower = f$lower, upper = f$upper, median = unname(tab["median"]),
       median_lower = unname(tab["0.95LCL"]), median_upper = unname(tab["0.95UCL"]))
}
fx$lung_km <- km(lung2$time, lung2$status)
fx$vet_km <- km(vet$time, vet$status)
halfdat <- data.frame(time = c(1, 2, 3, 4, 5, 6), status = c(1, 1, 1, 1, 0, 1), risk = c(3, 2, 2, 1, 0, 0))
wcsv(halfdat, "half.csv")
fx$half_km <- km(halfdat$time, halfdat$status)
lr <- function(time, status, group) {
  f <- survdiff(Surv(time, status) ~ group)
  list(chisq = f$chisq, df = length(f$n) - 1, p = pchisq(f$chisq, length(f$n) - 1, lower.tail = FALSE),
       observed = f$obs, expected = f$exp, groups = sub("group=", "", names(f$n)))
}
fx$lung_logrank <- lr(lung2$time, lung2$status, lung2$sex)
fx$vet_logrank <- lr(vet$time, vet$status, vet$celltype)

writeLines(tojson(fx), file.path(out, "r_fixtures.json"))
cat("wrote", file.path(out, "r_fixtures.json"), "\n")
