package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Flags is a binary's flag set. Unlike a bare flag.FlagSet it never prints
// anything on a bad command line: Parse returns a one-line usage error
// naming the flag (the flag package would print its error and then every
// flag's help, 90 lines for the edge, burying the one that matters); only
// --help prints the usage, to stdout, and it says how the PARLEY_*
// variables map to flags.
type Flags struct {
	*flag.FlagSet
	// Synopsis opens --help: the command lines the binary takes and what
	// they do, each line complete.
	Synopsis string
	// Help receives --help's text; nil is os.Stdout.
	Help io.Writer
}

// NewFlags returns an empty flag set for the binary (or subcommand) name.
func NewFlags(name, synopsis string) *Flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {} // --help is printed by Parse, errors are returned
	return &Flags{FlagSet: fs, Synopsis: synopsis}
}

// Parse parses args, then fills every flag not given on the command line
// from its PARLEY_* variable (precedence: flag, environment, default). A
// bad value, an unknown flag or a stray argument is a usage error (ErrUsage)
// of one line that names the flag; --help prints the usage and returns
// flag.ErrHelp.
func (f *Flags) Parse(args []string, getenv func(string) string) error {
	failed := f.watchValues()
	err := f.FlagSet.Parse(args)
	f.restoreValues()
	switch {
	case errors.Is(err, flag.ErrHelp):
		f.printHelp()
		return err
	case err != nil && *failed != nil:
		return *failed
	case err != nil:
		return Usagef("%s (%s --help lists the flags)", dashDash(err.Error()), f.Name())
	case f.NArg() > 0:
		return Usagef("unexpected argument %q (%s --help lists the flags)", f.Arg(0), f.Name())
	}
	given := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	f.VisitAll(func(fl *flag.Flag) {
		if given[fl.Name] || err != nil {
			return
		}
		if v := getenv(EnvName(fl.Name)); v != "" {
			if f.Set(fl.Name, v) != nil {
				err = Usagef("%s=%q: --%s %s", EnvName(fl.Name), v, fl.Name, want(fl.Value))
			}
		}
	})
	return err
}

// checkedValue wraps a flag's value during Parse to know which flag a bad
// value was for: the flag package's own message ("invalid value "5" for
// flag -read-timeout: parse error") names neither the expected form nor the
// flag the way the docs spell it.
type checkedValue struct {
	flag.Value
	name   string
	failed *error
}

func (v checkedValue) Set(s string) error {
	err := v.Value.Set(s)
	if err != nil && *v.failed == nil {
		*v.failed = Usagef("--%s %q: %s", v.name, s, want(v.Value))
	}
	return err
}

// IsBoolFlag keeps "--insecure" (without "=true") working while wrapped.
func (v checkedValue) IsBoolFlag() bool {
	b, ok := v.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func (f *Flags) watchValues() *error {
	failed := new(error)
	f.VisitAll(func(fl *flag.Flag) {
		fl.Value = checkedValue{Value: fl.Value, name: fl.Name, failed: failed}
	})
	return failed
}

// restoreValues unwraps the values again: --help's PrintDefaults names each
// flag's type from its value's concrete type.
func (f *Flags) restoreValues() {
	f.VisitAll(func(fl *flag.Flag) {
		if c, ok := fl.Value.(checkedValue); ok {
			fl.Value = c.Value
		}
	})
}

// want says what a flag of v's type takes.
func want(v flag.Value) string {
	g, ok := v.(flag.Getter)
	if !ok {
		return "is not valid"
	}
	switch g.Get().(type) {
	case time.Duration:
		return "needs a duration with a unit: 500ms, 10s, 2m, 1h30m"
	case bool:
		return "takes true or false"
	case int, int64:
		return "needs an integer (in range)"
	case uint, uint64:
		return "needs a non-negative integer (in range)"
	case float64:
		return "needs a number"
	}
	return "is not valid"
}

// dashDash spells the flag of one of the flag package's errors ("flag
// provided but not defined: -x") the way the docs do (--x).
func dashDash(msg string) string {
	i := strings.LastIndex(msg, ": -")
	if i < 0 || strings.HasPrefix(msg[i+2:], "--") {
		return msg
	}
	return msg[:i+2] + "-" + msg[i+2:]
}

func (f *Flags) printHelp() {
	w := f.Help
	if w == nil {
		w = os.Stdout
	}
	fmt.Fprint(w, strings.TrimRight(f.Synopsis, "\n")+"\n\n")
	fmt.Fprintf(w, "Every flag can also be set in the environment as PARLEY_<NAME>, upper case with _ for -:\n"+
		"--log-level is %s. A flag on the command line wins over the environment.\n"+
		"-flag and --flag are the same.\n\nFlags:\n", EnvName("log-level"))
	f.SetOutput(w)
	f.PrintDefaults()
	f.SetOutput(io.Discard)
}
