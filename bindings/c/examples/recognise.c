/* The C ABI in one program: load the embedded toy model, install a concept package and
 * recognise it in a photo, then stream a short answer about the photo.
 *
 *   cc -I bindings/c/include bindings/c/examples/recognise.c -L target/debug -lconcepts \
 *      -Wl,-rpath,target/debug -o recognise
 *   ./recognise bo.ycpt photo.png [HOME]
 *
 * Built and run by bindings/c/tests/c_example.rs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "concepts.h"

static int fail(const char *what, ConceptsStatus status) {
    fprintf(stderr, "%s failed: %s: %s\n", what, concepts_status_name(status), concepts_last_error());
    return 1;
}

static bool print_piece(const char *piece, void *user_data) {
    int *pieces = (int *)user_data;
    *pieces += 1;
    fputs(piece, stdout);
    fflush(stdout);
    return true; /* false would stop the generation */
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s PACKAGE.ycpt PHOTO [HOME]\n", argv[0]);
        return 2;
    }
    const char *home = argc > 3 ? argv[3] : NULL;

    ConceptsRuntime *rt = NULL;
    /* NULL model folder: $CONCEPTS_DEFAULT_MODEL, else the embedded toy model. */
    ConceptsStatus status = concepts_runtime_open(NULL, home, &rt);
    if (status != CONCEPTS_STATUS_OK) return fail("concepts_runtime_open", status);

    char *name = NULL;
    status = concepts_install(rt, argv[1], true, &name);
    if (status != CONCEPTS_STATUS_OK) {
        concepts_runtime_free(rt);
        return fail("concepts_install", status);
    }
    printf("installed %s\n", name);

    const char *names[1] = {name};
    ConceptsScore *scores = NULL;
    size_t n = 0;
    status = concepts_recognise(rt, argv[2], names, 1, &scores, &n);
    if (status != CONCEPTS_STATUS_OK) {
        concepts_string_free(name);
        concepts_runtime_free(rt);
        return fail("concepts_recognise", status);
    }
    for (size_t i = 0; i < n; i++) {
        printf("%s %s p_yes=%.4f p_no=%.4f present=%s\n", scores[i].name, scores[i].identifier,
               scores[i].p_yes, scores[i].p_no, scores[i].present ? "yes" : "no");
    }
    concepts_scores_free(scores, n);

    int pieces = 0;
    char *answer = NULL;
    printf("answer: ");
    status = concepts_chat(rt, "Describe the image.", argv[2], NULL, 0, 12, print_piece, &pieces,
                           &answer);
    printf("\n");
    if (status != CONCEPTS_STATUS_OK) {
        concepts_string_free(name);
        concepts_runtime_free(rt);
        return fail("concepts_chat", status);
    }
    printf("streamed %d pieces, %zu bytes\n", pieces, strlen(answer));
    concepts_string_free(answer);
    concepts_string_free(name);
    concepts_runtime_free(rt);
    return 0;
}
