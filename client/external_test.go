package client_test

import (
	"bytes"
	"errors"
	"fmt"
	"go/importer"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// modulePath is this repository's module; its packages under internal/ are
// what another module can never import, so nothing client takes or returns
// may come from them.
const modulePath = "github.com/parley-mesh/parley"

// TestExternalModule builds, in a module of its own, a package that names
// every type client's API takes or returns: the parameters and results of
// every exported function and method, every exported field, and so on
// through every type of this repository those lead to. An in-repo test
// cannot show this: Go lets any package of the module import internal/, so
// only a compile from outside fails when client exposes an internal type.
// The program is generated from client's type information, so a method
// added tomorrow is covered without anyone remembering this test.
func TestExternalModule(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a separate module")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	pkg := loadTypes(t, modulePath+"/client")
	api, leaks := apiSource(pkg)
	for _, l := range leaks {
		t.Errorf("client's API exposes %s, which another module cannot import", l)
	}

	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", fmt.Sprintf("module example.com/parleyuser\n\ngo 1.26.0\n\n"+
		"require %s v0.0.0-00010101000000-000000000000\n\nreplace %s => %s\n", modulePath, modulePath, root))
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	write("go.sum", string(sum))
	write("api/api.go", api)
	// The control: the same build must refuse an internal import, or a
	// passing api package would prove nothing.
	write("leak/leak.go", "package leak\n\nimport _ \""+modulePath+"/internal/metrics\"\n")

	goCmd := func(args ...string) (string, error) {
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		// -mod=mod lets the go command complete go.mod and go.sum for the
		// new module (from the warm module cache or the proxy); GOWORK=off
		// keeps a workspace above the temp dir out of it.
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := goCmd("vet", "./api"); err != nil {
		t.Fatalf("go vet of a module using client: %v\n%s\n%s", err, out, numbered(api))
	}
	if out, err := goCmd("build", "./api"); err != nil {
		t.Fatalf("go build of a module using client: %v\n%s", err, out)
	}
	out, err := goCmd("build", "./leak")
	if err == nil || !strings.Contains(out, "use of internal package") {
		t.Fatalf("go build of an internal import from another module: err %v, output:\n%s", err, out)
	}
}

// loadTypes reads a package's type information from the export data the go
// command already compiled (what golang.org/x/tools/go/packages does), so the
// test needs no dependency and no source type-check of the standard library.
func loadTypes(t *testing.T, path string) *types.Package {
	t.Helper()
	out, err := exec.Command("go", "list", "-export", "-deps", "-f", "{{.ImportPath}}\t{{.Export}}", path).Output()
	if err != nil {
		if ee, ok := errors.AsType[*exec.ExitError](err); ok {
			t.Fatalf("go list %s: %v\n%s", path, err, ee.Stderr)
		}
		t.Fatalf("go list %s: %v", path, err)
	}
	exports := map[string]string{}
	for line := range strings.Lines(string(out)) {
		p, file, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if ok && file != "" {
			exports[p] = file
		}
	}
	imp := importer.ForCompiler(token.NewFileSet(), "gc", func(p string) (io.ReadCloser, error) {
		f, ok := exports[p]
		if !ok {
			return nil, fmt.Errorf("no export data for %s", p)
		}
		return os.Open(f)
	})
	pkg, err := imp.Import(path)
	if err != nil {
		t.Fatal(err)
	}
	return pkg
}

// apiSource renders a package that spells out the type of every exported
// member of pkg, and of every exported field and method of each type of this
// module those types lead to. leaks lists the types from internal packages
// met on the way.
func apiSource(pkg *types.Package) (src string, leaks []string) {
	imports := map[string]string{} // path → name in the generated file
	qual := func(p *types.Package) string {
		if name, ok := imports[p.Path()]; ok {
			return name
		}
		name := p.Name()
		for taken := true; taken; {
			taken = false
			for _, n := range imports {
				if n == name {
					name += "_"
					taken = true
				}
			}
		}
		imports[p.Path()] = name
		return name
	}
	var body bytes.Buffer
	seen := map[*types.TypeName]bool{}
	var queue []*types.Named
	// reach queues the named types of this module that t mentions, so their
	// fields and methods are spelled out in turn.
	var reach func(t types.Type)
	reach = func(t types.Type) {
		switch t := t.(type) {
		case *types.Named:
			obj := t.Obj()
			if obj.Pkg() == nil || seen[obj] {
				return
			}
			seen[obj] = true
			path := obj.Pkg().Path()
			if path == modulePath+"/internal" || strings.HasPrefix(path, modulePath+"/internal/") {
				leaks = append(leaks, path+"."+obj.Name())
			}
			if path == modulePath || strings.HasPrefix(path, modulePath+"/") {
				queue = append(queue, t)
			}
		case *types.Pointer:
			reach(t.Elem())
		case *types.Slice:
			reach(t.Elem())
		case *types.Array:
			reach(t.Elem())
		case *types.Map:
			reach(t.Key())
			reach(t.Elem())
		case *types.Chan:
			reach(t.Elem())
		case *types.Signature:
			for v := range t.Params().Variables() {
				reach(v.Type())
			}
			for v := range t.Results().Variables() {
				reach(v.Type())
			}
		case *types.Struct:
			for f := range t.Fields() {
				reach(f.Type())
			}
		}
	}
	str := func(t types.Type) string { reach(t); return types.TypeString(t, qual) }

	scope := pkg.Scope()
	for _, name := range scope.Names() {
		obj := scope.Lookup(name)
		if !obj.Exported() {
			continue
		}
		ref := qual(pkg) + "." + name
		switch obj := obj.(type) {
		case *types.TypeName:
			fmt.Fprintf(&body, "var _ *%s\n", str(obj.Type()))
		case *types.Const:
			fmt.Fprintf(&body, "const _ = %s\n", ref)
		case *types.Func:
			fmt.Fprintf(&body, "var _ %s = %s\n", str(unnamed(obj.Type().(*types.Signature))), ref)
		default:
			fmt.Fprintf(&body, "var _ %s = %s\n", str(obj.Type()), ref)
		}
	}
	for len(queue) > 0 {
		t := queue[0]
		queue = queue[1:]
		if t.TypeParams().Len() > 0 {
			continue // a generic type is spelled only where instantiated
		}
		tname := types.TypeString(t, qual)
		if st, ok := t.Underlying().(*types.Struct); ok {
			for f := range st.Fields() {
				if f.Exported() {
					fmt.Fprintf(&body, "func _(v *%s) %s { return v.%s }\n", tname, str(f.Type()), f.Name())
				}
			}
		}
		recv := types.Type(types.NewPointer(t))
		if types.IsInterface(t) {
			recv = t
		}
		ms := types.NewMethodSet(recv)
		for sel := range ms.Methods() {
			m := sel.Obj()
			if !m.Exported() {
				continue
			}
			// A method expression's type takes the receiver first, unnamed.
			sig := m.Type().(*types.Signature)
			params := []*types.Var{types.NewParam(token.NoPos, nil, "", recv)}
			params = slices.AppendSeq(params, sig.Params().Variables())
			expr := types.NewSignatureType(nil, nil, nil, types.NewTuple(params...), sig.Results(), sig.Variadic())
			fmt.Fprintf(&body, "var _ %s = (%s).%s\n", str(unnamed(expr)), types.TypeString(recv, qual), m.Name())
		}
	}

	var b strings.Builder
	b.WriteString("// Package api names every type of client's API from outside its module.\npackage api\n\nimport (\n")
	paths := make([]string, 0, len(imports))
	for p := range imports {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		fmt.Fprintf(&b, "\t%s %q\n", imports[p], p)
	}
	b.WriteString(")\n\n")
	b.Write(body.Bytes())
	return b.String(), leaks
}

// unnamed drops a signature's parameter and result names: Go refuses a
// parameter list that names some (the ones a method had) and not others
// (the receiver a method expression adds).
func unnamed(sig *types.Signature) *types.Signature {
	strip := func(t *types.Tuple) *types.Tuple {
		vs := make([]*types.Var, 0, t.Len())
		for v := range t.Variables() {
			vs = append(vs, types.NewParam(token.NoPos, nil, "", v.Type()))
		}
		return types.NewTuple(vs...)
	}
	return types.NewSignatureType(nil, nil, nil, strip(sig.Params()), strip(sig.Results()), sig.Variadic())
}

func numbered(src string) string {
	var b strings.Builder
	n := 0
	for line := range strings.Lines(src) {
		n++
		fmt.Fprintf(&b, "%4d  %s", n, line)
	}
	return b.String()
}
